"""Quarantine: the reasons a record is refused, the quarantine rows, and the read schema they travel in.

A record either becomes one row of ``SUPPORT_SCHEMA`` / ``EVAL_SCHEMA`` or one row of ``QUARANTINE_SCHEMA``
with the offending field and a reason of the form ``"<kind of problem>: <details>"``; the part before the
first colon is the category that summaries count (see :data:`REASONS`). Quarantined rows travel beside the
valid ones in the read schema (``_error_reason`` set) until :func:`split_quarantine` separates them.
Pure: no Ray, no file or network I/O.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from edray.data.config import ReadConfig
from edray.schemas import ANSWER_TYPES, EVAL_SCHEMA, QUARANTINE_SCHEMA, SUPPORT_SCHEMA

# Category (the part of a reason before the first colon) -> what it means. docs/data.md mirrors it.
REASONS: dict[str, str] = {
    "unreadable file": "a whole file could not be opened or parsed; its records cannot be counted",
    "invalid JSON": "a JSONL line or a LLaVA JSON element is not valid JSON",
    "invalid UTF-8": "bytes that are not UTF-8 text (or a lone surrogate escape) in a line or a text field",
    "not an object": "the record is not a JSON object / mapping",
    "record too large": "a JSONL line longer than the limits allow for one sample (images as base64 and "
    "every turn at full length, plus 1 MiB)",
    "invalid record": "a record the normalizer could not handle; the details name the error",
    "missing field": "a required field is absent or null",
    "wrong type": "a field has the wrong type (e.g. messages is a string, id is a list)",
    "empty conversation": "messages / conversations is an empty list",
    "malformed turn": "a chat turn is not a {role, content} / {from, value} mapping, or its content is empty",
    "unknown role": "a turn's role is not system, user, assistant (LLaVA: human, gpt)",
    "too many turns": "more chat turns than max_turns",
    "text too long": "a message, answer or choice longer than max_text_chars",
    "no user turn": "the conversation has no user turn (no question)",
    "no assistant answer": "a supporting sample whose last turn is not a non-empty assistant answer",
    "placeholder mismatch": "the number of <image> placeholders differs from the number of images",
    "too many images": "more images than max_images",
    "image not found": "an image path that does not exist",
    "image unreadable": "an image file that exists but cannot be read (permissions, a folder, I/O error)",
    "remote image": "an http(s) image URL: readers never fetch from the network",
    "invalid base64": "a data URL or base64 string that does not decode",
    "corrupt image": "bytes that PIL cannot decode (truncated, not an image, empty)",
    "image too large": "an encoded image over max_image_bytes",
    "too many pixels": "an image over max_image_pixels (width x height)",
    "missing answer": "an evaluation sample without a gold answer",
    "bad answer_type": f"answer_type is not one of {', '.join(ANSWER_TYPES)}",
    "bad choices": "choices is not a non-empty list of non-empty strings, or is missing for multiple_choice",
    "answer not in choices": "a multiple_choice answer that is neither an option letter nor one of the choices",
    "bad metadata": "metadata is neither a mapping nor a JSON object string",
    "duplicate id": "a second record with an id already seen (the first, by source and position, is kept)",
}

# Extra read-time columns: where a row came from and, for a quarantined row, why.
READ_EXTRA_FIELDS = [
    pa.field("_source", pa.string()),
    pa.field("_position", pa.int64()),
    pa.field("_error_field", pa.string()),
    pa.field("_error_reason", pa.string()),
    pa.field("_raw", pa.string()),
]


class RecordError(Exception):
    """One problem with one record: the field it concerns and a ``"category: details"`` reason."""

    def __init__(self, field: str | None, category: str, detail: str = "") -> None:
        assert category in REASONS, category
        self.field = field
        self.reason = f"{category}: {detail}" if detail else category
        super().__init__(f"{field}: {self.reason}")


def target_schema(kind: str) -> pa.Schema:
    """``SUPPORT_SCHEMA`` for ``kind="support"``, ``EVAL_SCHEMA`` for ``kind="eval"``.

    Raises:
        ValueError: unknown kind.
    """
    if kind == "support":
        return SUPPORT_SCHEMA
    if kind == "eval":
        return EVAL_SCHEMA
    raise ValueError(f"kind must be 'support' or 'eval', got {kind!r}")


def read_schema(kind: str) -> pa.Schema:
    """Schema of the rows a reader yields: the target columns (all nullable, null in quarantined rows)
    plus ``_source``, ``_position``, ``_error_field``, ``_error_reason`` and ``_raw``."""
    return pa.schema([f.with_nullable(True) for f in target_schema(kind)] + READ_EXTRA_FIELDS)


def reason_category(reason: str) -> str:
    """The category of a quarantine reason (the text before the first colon)."""
    return reason.split(":", 1)[0].strip()


def shorten(s: str, n: int = 120) -> str:
    """``s`` cut to ``n`` characters (with ``...``) for a reason or a log line."""
    return s if len(s) <= n else s[: n - 3] + "..."


def raw_excerpt(raw: Any, limit: int) -> str | None:
    """A JSON excerpt of a raw record for the quarantine table; bytes shown as ``<N bytes>``."""
    if limit <= 0:
        return None

    def _default(o: Any) -> Any:
        if isinstance(o, (bytes, bytearray, memoryview)):
            return f"<{len(o)} bytes>"
        return repr(o)

    def _clean(o: Any) -> Any:
        if isinstance(o, dict):
            return {str(k): _clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [_clean(v) for v in o]
        if isinstance(o, (bytes, bytearray, memoryview)):
            return f"<{len(o)} bytes>"
        if isinstance(o, str):
            return o[:limit].encode("utf-8", "backslashreplace").decode("utf-8")
        return o

    try:
        text = json.dumps(_clean(raw), ensure_ascii=False, default=_default)
    except (TypeError, ValueError):
        text = repr(raw)
    return text[:limit]


def quarantine_row(
    source: str,
    position: int | None,
    field: str | None,
    reason: str,
    record_id: str | None = None,
    raw: Any = None,
    cfg: ReadConfig | None = None,
    stage: str = "read",
) -> dict[str, Any]:
    """One ``QUARANTINE_SCHEMA`` row."""
    limit = (cfg or ReadConfig()).raw_chars
    return {
        "record_id": record_id,
        "source": source,
        "position": position,
        "field": field,
        "reason": reason,
        "stage": stage,
        "raw": raw if isinstance(raw, str) or raw is None else raw_excerpt(raw, limit),
    }


def read_row(
    row: dict[str, Any] | None, qrow: dict[str, Any] | None, kind: str, source: str, position: int | None
) -> dict[str, Any]:
    """Merge a :func:`normalize_record` result into one row of :func:`read_schema`."""
    out: dict[str, Any] = {f.name: None for f in target_schema(kind)}
    if row is not None:
        out.update(row)
        out.update(_source=source, _position=position, _error_field=None, _error_reason=None, _raw=None)
    else:
        assert qrow is not None
        out["id"] = qrow["record_id"]
        out.update(
            _source=qrow["source"], _position=qrow["position"], _error_field=qrow["field"],
            _error_reason=qrow["reason"], _raw=qrow["raw"],
        )
    return out


def rows_to_table(rows: list[dict[str, Any]], kind: str) -> pa.Table:
    """Rows of :func:`read_schema` (as dicts) to an Arrow table with exactly that schema."""
    return pa.Table.from_pylist(rows, schema=read_schema(kind))


def split_quarantine(table: pa.Table, kind: str, stage: str = "read") -> tuple[pa.Table, pa.Table]:
    """Split a table of :func:`read_schema` rows into valid rows and quarantine rows.

    Args:
        table: rows as produced by the readers (extra columns beyond the read schema are ignored).
        kind: ``"support"`` or ``"eval"``.
        stage: recorded in the quarantine rows' ``stage`` column.

    Returns:
        ``(valid, quarantine)``: valid rows cast exactly to ``SUPPORT_SCHEMA`` / ``EVAL_SCHEMA``, and
        ``QUARANTINE_SCHEMA`` rows for the others.
    """
    schema = target_schema(kind)
    if table.num_rows == 0:
        return schema.empty_table(), QUARANTINE_SCHEMA.empty_table()
    bad = pc.is_valid(table["_error_reason"])
    valid = table.filter(pc.invert(bad)).select(schema.names).cast(schema)
    q = table.filter(bad)
    raw = q["_raw"] if "_raw" in q.column_names else pa.nulls(q.num_rows, pa.string())
    quarantine = pa.table(
        {
            "record_id": q["id"].cast(pa.string()),
            "source": pc.fill_null(q["_source"], "<unknown>"),
            "position": q["_position"],
            "field": q["_error_field"],
            "reason": q["_error_reason"],
            "stage": pa.array([stage] * q.num_rows, pa.string()),
            "raw": raw,
        }
    ).cast(QUARANTINE_SCHEMA)
    return valid, quarantine
