"""Configuration: pydantic models, YAML loading, ``--set a.b=value`` overrides, readable errors.

Every stage has a config model deriving from :class:`EdrayModel` (``extra="forbid"``, every field
typed, described and bounded). :func:`load_config` merges a YAML file with dotted overrides and
validates; a failure raises :class:`ConfigError` whose message names each offending field, the value
given and what is allowed, one line per problem, and never a traceback.
"""

from __future__ import annotations

import json
import os
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration could not be read or validated. The message is meant for the user as is."""


class EdrayModel(BaseModel):
    """Base of every edray config: unknown keys are errors, defaults are validated too."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=False)


def parse_scalar(text: str) -> Any:
    """Parse the right-hand side of ``--set key=value`` as YAML (``3``, ``true``, ``[a, b]``, ``null``)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict, creating intermediate dicts.

    Raises:
        ConfigError: an override is not of the form ``key=value`` or walks into a non-mapping.
    """
    out = json.loads(json.dumps(data)) if data else {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=3e-4")
        key, _, raw = item.partition("=")
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set {item!r}: empty key")
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"--set {item!r}: {where} is {nxt!r}, not a section")
            node = nxt
        node[parts[-1]] = parse_scalar(raw)
    return out


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping; an empty file is an empty mapping.

    Raises:
        ConfigError: missing file, invalid YAML, or a top level that is not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: top level must be a mapping, got {type(data).__name__}")
    return data


def format_validation_error(exc: ValidationError, model: type[BaseModel], source: str = "") -> str:
    """One line per problem: ``field: value given -> what is allowed``."""
    lines = [f"invalid {model.__name__}{' in ' + source if source else ''}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        given = err.get("input")
        given_s = "missing" if err["type"] == "missing" else repr(given)
        if len(given_s) > 120:
            given_s = given_s[:117] + "..."
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(_fields_at(model, err["loc"][:-1])))
            msg = f"unknown field (allowed here: {allowed})"
        lines.append(f"  {loc}: {given_s} -> {msg}")
    return "\n".join(lines)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The config model inside an annotation (``Inner``, ``Optional[Inner]``, ``Inner | None``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model at ``loc``; empty if it cannot be resolved."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = _model_in(field.annotation)
    return list(current.model_fields) if current is not None else []


def validate_config(model: type[M], data: dict[str, Any], source: str = "") -> M:
    """Validate ``data`` against ``model``.

    Raises:
        ConfigError: with one readable line per invalid field.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model, source)) from None


def load_config(
    model: type[M],
    path: str | os.PathLike[str] | None = None,
    overrides: list[str] | None = None,
    section: str | None = None,
) -> M:
    """Load ``model`` from an optional YAML file plus dotted overrides.

    Args:
        model: the config class to validate against.
        path: YAML file; ``None`` starts from the model's defaults.
        overrides: ``a.b=value`` strings applied after the file.
        section: if given and the file has a top-level key of that name, only that section is used
            (a full-run YAML holds one section per stage).

    Returns:
        The validated config.

    Raises:
        ConfigError: unreadable file or invalid values.
    """
    data = read_yaml(path) if path is not None else {}
    if section is not None and isinstance(data.get(section), dict):
        data = data[section]
    data = apply_overrides(data, overrides or [])
    return validate_config(model, data, str(path) if path else "")


def describe_config(model: type[BaseModel] | BaseModel, prefix: str = "") -> list[tuple[str, str, str]]:
    """Flatten a config into ``(dotted_key, value_or_default_as_yaml, description)`` rows."""
    cls = model if isinstance(model, type) else type(model)
    rows: list[tuple[str, str, str]] = []
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        value = getattr(model, name) if isinstance(model, BaseModel) else field.default
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe_config(value if isinstance(value, BaseModel) else ann, key + "."))
            continue
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        shown = yaml.safe_dump(_jsonable(value), default_flow_style=True).strip()
        if shown.endswith("\n..."):
            shown = shown[:-4].strip()
        shown = shown.removesuffix("...").strip()
        rows.append((key, shown, field.description or ""))
    return rows


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if hasattr(value, "value") and not isinstance(value, (int, float, str, bool)):
        return value.value
    try:
        json.dumps(value)
    except TypeError:
        return str(value)
    return value


def dump_config(config: BaseModel) -> dict[str, Any]:
    """The resolved config as a JSON-compatible dict (what ``manifest.json`` records)."""
    return config.model_dump(mode="json")
