"""Engines loaded by import path: any class or factory that answers the :class:`~edray.serve.engine.Engine`
contract runs behind ``edray serve`` or in process behind :class:`~edray.serve.client.ModelClient`.

An engine spec is ``package.module:attribute``. The attribute is called as ``attribute(name, **options)``
and must return an engine whose ``model_ids()`` include ``name``; a class may instead offer
``from_options(name, options)``. The skills world's teacher is one such engine
(``edray.world.teacher:WorldTeacher``); nothing here knows it.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from typing import Any

from edray.serve.engine import Engine, EngineError

ENGINE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

# The world teacher under its old short name, so existing configs keep working.
ALIASES = {"world_teacher": "edray.world.teacher:WorldTeacher"}


def resolve_spec(spec: str) -> str:
    """The import path of an engine spec (aliases expanded).

    Raises:
        ValueError: ``spec`` is not ``module:attribute``.
    """
    spec = ALIASES.get(spec, spec)
    if not ENGINE_SPEC.match(spec):
        raise ValueError(f"engine {spec!r}: expected an import path 'package.module:attribute'")
    return spec


def load_engine(spec: str, name: str, options: Mapping[str, Any] | None = None) -> Engine:
    """Import and build the engine named by ``spec``.

    Args:
        spec: ``package.module:attribute`` (or an alias such as ``world_teacher``).
        name: the model name the engine answers to.
        options: keyword arguments of the factory.

    Returns:
        The engine.

    Raises:
        EngineError: the module or attribute cannot be imported, or the factory refuses the options (500).
    """
    path = resolve_spec(spec)
    module_name, attr = path.split(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise EngineError(f"engine {path!r} cannot be imported: {exc}", 500) from None
    opts = dict(options or {})
    try:
        engine = obj.from_options(name, opts) if hasattr(obj, "from_options") else obj(name, **opts)
    except (TypeError, ValueError) as exc:
        raise EngineError(f"engine {path!r} refused its options {sorted(opts)}: {exc}", 500) from None
    if not isinstance(engine, Engine):
        raise EngineError(f"engine {path!r} built a {type(engine).__name__}, which lacks generate/stream/model_ids", 500)
    return engine
