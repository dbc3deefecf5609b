"""Pure normalization of raw records into supporting / evaluation samples, with quarantine reasons.

No Ray, no file or network I/O: the readers (``readers.py``) turn every input format into plain Python
dicts (image files already read into bytes, or replaced by an image-error marker when they could not be
read) and call :func:`normalize_record` on each. A record either becomes one row of ``SUPPORT_SCHEMA`` /
``EVAL_SCHEMA`` or one row of ``QUARANTINE_SCHEMA`` with the offending field and a reason of the form
``"<kind of problem>: <details>"``; the part before the first colon is the category that summaries count
(see :data:`REASONS`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
import warnings
from pathlib import PurePath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from edray.data.config import ReadConfig
from edray.schemas import ANSWER_TYPES, EVAL_SCHEMA, IMAGE_PLACEHOLDER, QUARANTINE_SCHEMA, SUPPORT_SCHEMA

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

IMAGE_ERROR_KEY = "__edray_image_error__"
_ROLE_MAP = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}
_IMAGE_SIGNATURES = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"BM", b"II*\x00", b"MM\x00*")
_BASE64_RE = re.compile(r"^[A-Za-z0-9+/=\s_-]+$")


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


def content_id(
    messages: list[dict[str, str]],
    images: list[bytes],
    answer: str | None = None,
    choices: list[str] | None = None,
) -> str:
    """A stable id from a sample's content: same turns, image bytes and answer give the same id on every
    machine and run (SHA-256 of a canonical JSON; images enter through their own SHA-256).

    Args:
        messages: normalized ``{role, content}`` turns.
        images: encoded image bytes, in placeholder order.
        answer: gold answer of an evaluation sample.
        choices: options of an evaluation sample.

    Returns:
        32 hexadecimal characters.
    """
    payload = {
        "messages": [[m["role"], m["content"]] for m in messages],
        "images": [hashlib.sha256(bytes(b)).hexdigest() for b in images],
    }
    if answer is not None:
        payload["answer"] = answer
    if choices is not None:
        payload["choices"] = list(choices)
    text = json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def image_error(category: str, detail: str) -> dict[str, str]:
    """The marker a reader puts in place of an image it could not load (``normalize_record`` reports it)."""
    return {IMAGE_ERROR_KEY: category, "detail": detail}


def image_path_of(value: Any) -> str | None:
    """The file path an image entry refers to, or ``None`` when it carries its data (bytes, a data URL,
    base64) or is something else. Readers read the paths this returns; ``normalize_record`` judges the rest.
    """
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return None
        value = value.get("path")
    if not isinstance(value, str) or not value.strip():
        return None
    s = value.strip()
    if s.startswith("data:") or s.startswith(("http://", "https://")) or _looks_like_base64(s):
        return None
    return s.removeprefix("file://")


def _looks_like_base64(s: str) -> bool:
    # A path has a dot (an extension) or is short; a base64 image is long and has neither dots nor spaces.
    return len(s) >= 64 and "." not in s and _BASE64_RE.match(s) is not None


def _decode_image_entry(value: Any, field: str) -> bytes:
    """Bytes of one image entry, or RecordError naming why not."""
    if isinstance(value, dict) and IMAGE_ERROR_KEY in value:
        raise RecordError(field, value[IMAGE_ERROR_KEY], str(value.get("detail", "")))
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            value = value["bytes"]
        elif value.get("path") is not None:
            value = value["path"]
        else:
            raise RecordError(field, "missing field", "image has neither bytes nor path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        s = value.strip()
        if s.startswith(("http://", "https://")):
            raise RecordError(field, "remote image", f"{_short(s)} (download it and give a path)")
        if s.startswith("data:"):
            header, sep, data = s.partition(",")
            if not sep or ";base64" not in header:
                raise RecordError(field, "invalid base64", f"data URL without ';base64,': {_short(s)}")
            s = data
        elif not _looks_like_base64(s):
            raise RecordError(field, "image not found", _short(s))
        cleaned = re.sub(r"\s+", "", s)
        try:
            return base64.b64decode(cleaned, validate=True)
        except (binascii.Error, ValueError) as exc:
            if re.fullmatch(r"[A-Za-z0-9_=-]+", cleaned):
                try:
                    return base64.urlsafe_b64decode(cleaned)
                except (binascii.Error, ValueError):
                    pass
            raise RecordError(field, "invalid base64", f"{exc}: {_short(s, 60)}") from None
    raise RecordError(field, "wrong type", f"an image must be bytes, a path or a data URL, got {type(value).__name__}")


def check_image(data: bytes, field: str, cfg: ReadConfig) -> None:
    """Check one encoded image against the limits; decode it with PIL when ``cfg.decode_images``.

    Raises:
        RecordError: empty, too large, too many pixels, or undecodable.
    """
    if len(data) == 0:
        raise RecordError(field, "corrupt image", "empty (0 bytes)")
    if len(data) > cfg.max_image_bytes:
        raise RecordError(field, "image too large", f"{len(data)} bytes > max_image_bytes={cfg.max_image_bytes}")
    if not cfg.decode_images:
        if not data.startswith(_IMAGE_SIGNATURES) and data[4:12] not in (b"ftypavif", b"ftypheic"):
            raise RecordError(field, "corrupt image", f"unknown file signature {data[:8]!r}")
        return
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > cfg.max_image_pixels:
                raise RecordError(
                    field, "too many pixels", f"{w}x{h} = {w * h} > max_image_pixels={cfg.max_image_pixels}"
                )
            img.load()
    except RecordError:
        raise
    except Image.DecompressionBombError as exc:
        raise RecordError(field, "too many pixels", str(exc)) from None
    except Image.UnidentifiedImageError:
        raise RecordError(field, "corrupt image", f"not a recognizable image file (starts with {data[:8]!r})") from None
    except Exception as exc:  # PIL raises many types for bad data; all mean the same here.
        raise RecordError(field, "corrupt image", f"{type(exc).__name__}: {exc}") from None


def _short(s: str, n: int = 120) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def _text(value: Any, field: str, cfg: ReadConfig, *, allow_empty: bool = True) -> str:
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RecordError(field, "invalid UTF-8", f"byte {exc.object[exc.start]:#04x} at offset {exc.start}") from None
    if not isinstance(value, str):
        raise RecordError(field, "wrong type", f"expected a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RecordError(field, "invalid UTF-8", f"lone surrogate {value[exc.start]!r} at character {exc.start}") from None
    if len(value) > cfg.max_text_chars:
        raise RecordError(field, "text too long", f"{len(value)} characters > max_text_chars={cfg.max_text_chars}")
    if not allow_empty and not value.strip():
        raise RecordError(field, "malformed turn", "empty text")
    return value


def _content_text(content: Any, field: str, cfg: ReadConfig) -> str:
    """Turn content: a string, or OpenAI-style parts ``[{type: text, text}, {type: image}]``."""
    if isinstance(content, list):
        pieces = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or "type" not in part:
                raise RecordError(f"{field}[{j}]", "malformed turn", "a content part must be {type, ...}")
            if part["type"] == "text":
                pieces.append(_text(part.get("text"), f"{field}[{j}].text", cfg))
            elif part["type"] in ("image", "image_url"):
                pieces.append(IMAGE_PLACEHOLDER)
            else:
                raise RecordError(f"{field}[{j}].type", "malformed turn", f"unknown content part type {part['type']!r}")
        return _text("\n".join(pieces), field, cfg)
    return _text(content, field, cfg)


def _messages(raw: dict[str, Any], cfg: ReadConfig) -> list[dict[str, str]]:
    key = "messages" if raw.get("messages") is not None else "conversations"
    turns = raw.get(key)
    if turns is None:
        raise RecordError("messages", "missing field", "expected 'messages' ({role, content} turns) or 'conversations' (LLaVA)")
    if isinstance(turns, str):
        try:
            turns = json.loads(turns)
        except json.JSONDecodeError:
            raise RecordError(key, "wrong type", "expected a list of turns, got a string that is not JSON") from None
    if not isinstance(turns, (list, tuple)):
        raise RecordError(key, "wrong type", f"expected a list of turns, got {type(turns).__name__}")
    if len(turns) == 0:
        raise RecordError(key, "empty conversation", "no turns")
    if len(turns) > cfg.max_turns:
        raise RecordError(key, "too many turns", f"{len(turns)} turns > max_turns={cfg.max_turns}")
    out = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise RecordError(where, "malformed turn", f"expected a mapping, got {type(turn).__name__}")
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if role is None:
            raise RecordError(f"{where}.role", "missing field", "a turn needs 'role' (or LLaVA 'from')")
        if not isinstance(role, str):
            raise RecordError(f"{where}.role", "wrong type", f"expected a string, got {type(role).__name__}")
        if role.lower() not in _ROLE_MAP:
            raise RecordError(
                f"{where}.role", "unknown role", f"{_short(role, 40)!r} (allowed: system, user, assistant; LLaVA: human, gpt)"
            )
        if content is None:
            raise RecordError(f"{where}.content", "missing field", "a turn needs 'content' (or LLaVA 'value')")
        out.append({"role": _ROLE_MAP[role.lower()], "content": _content_text(content, f"{where}.content", cfg)})
    return out


def _images(raw: dict[str, Any], cfg: ReadConfig) -> list[bytes]:
    key = "images" if raw.get("images") is not None else "image"
    value = raw.get(key)
    if value is None:
        return []
    if isinstance(value, (str, bytes, bytearray, dict)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise RecordError(key, "wrong type", f"expected a list of images, got {type(value).__name__}")
    if len(value) > cfg.max_images:
        raise RecordError(key, "too many images", f"{len(value)} images > max_images={cfg.max_images}")
    out = []
    for i, entry in enumerate(value):
        field = f"{key}[{i}]"
        data = _decode_image_entry(entry, field)
        check_image(data, field, cfg)
        out.append(data)
    return out


def _place_images(messages: list[dict[str, str]], n_images: int, cfg: ReadConfig) -> list[dict[str, str]]:
    n_marks = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
    if n_marks == n_images:
        return messages
    if n_marks == 0 and cfg.insert_missing_placeholders:
        # LLaVA convention: images precede the first question.
        for m in messages:
            if m["role"] == "user":
                m["content"] = (IMAGE_PLACEHOLDER + "\n") * n_images + m["content"]
                return messages
    raise RecordError(
        "images", "placeholder mismatch", f"{n_images} image(s) but {n_marks} {IMAGE_PLACEHOLDER} placeholder(s) in messages"
    )


def _optional_str_list(value: Any, field: str, category: str, cfg: ReadConfig) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise RecordError(field, category if category != "wrong type" else "wrong type",
                          f"expected a list of strings, got {type(value).__name__}")
    out = []
    for i, v in enumerate(value):
        if not isinstance(v, str) or (category == "bad choices" and not v.strip()):
            raise RecordError(f"{field}[{i}]", category, f"expected a non-empty string, got {_short(repr(v), 40)}")
        out.append(_text(v, f"{field}[{i}]", cfg))
    return out


def _metadata(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            raise RecordError("metadata", "bad metadata", "a string that is not JSON") from None
        if not isinstance(parsed, dict):
            raise RecordError("metadata", "bad metadata", f"JSON {type(parsed).__name__}, expected an object")
        return value
    if isinstance(value, dict):
        try:
            return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
        except (TypeError, ValueError) as exc:
            raise RecordError("metadata", "bad metadata", str(exc)) from None
    raise RecordError("metadata", "bad metadata", f"expected a mapping, got {type(value).__name__}")


def _scalar_text(value: Any, field: str, cfg: ReadConfig) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float, bytes)):
        raise RecordError(field, "wrong type", f"expected a string, got {type(value).__name__}")
    return _text(value if isinstance(value, (str, bytes)) else str(value), field, cfg)


def _infer_answer_type(answer: str, choices: list[str] | None) -> str:
    if choices:
        return "multiple_choice"
    if answer.strip().lower() in ("yes", "no"):
        return "yes_no"
    try:
        float(answer)
        return "number"
    except ValueError:
        return "open"


def _eval_fields(raw: dict[str, Any], cfg: ReadConfig, default_split: str | None) -> dict[str, Any]:
    if raw.get("answer") is None:
        raise RecordError("answer", "missing answer", "evaluation samples need a gold 'answer'")
    answer = _scalar_text(raw["answer"], "answer", cfg)
    if not answer.strip():
        raise RecordError("answer", "missing answer", "the answer is empty")
    choices = _optional_str_list(raw.get("choices"), "choices", "bad choices", cfg)
    if choices is not None and not choices:
        raise RecordError("choices", "bad choices", "an empty list (use null for open questions)")
    answer_type = raw.get("answer_type")
    if answer_type is None:
        answer_type = _infer_answer_type(answer, choices)
    elif not isinstance(answer_type, str) or answer_type not in ANSWER_TYPES:
        raise RecordError("answer_type", "bad answer_type", f"{_short(repr(answer_type), 40)} (allowed: {', '.join(ANSWER_TYPES)})")
    if answer_type == "multiple_choice":
        if not choices:
            raise RecordError("choices", "bad choices", "multiple_choice needs a list of choices")
        letters = [chr(ord("A") + i) for i in range(len(choices))]
        if answer.strip().upper() not in letters and answer not in choices:
            raise RecordError(
                "answer", "answer not in choices", f"{_short(answer, 40)!r} is not one of {letters[0]}-{letters[-1]} nor a choice"
            )
    split = raw.get("split")
    if split is None:
        split = default_split or cfg.split
    split = _scalar_text(split, "split", cfg)
    return {"answer": answer, "choices": choices, "answer_type": answer_type, "split": split}


def max_record_bytes(cfg: ReadConfig) -> int:
    """The longest serialized record the limits allow (images as base64, every turn at full length), plus
    1 MiB of slack: a longer JSONL line cannot hold a valid sample and is not parsed."""
    return cfg.max_images * (cfg.max_image_bytes * 4 // 3 + 64) + cfg.max_turns * cfg.max_text_chars * 6 + (1 << 20)


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


def normalize_record(
    raw: Any,
    kind: str,
    source: str,
    position: int | None,
    cfg: ReadConfig | None = None,
    *,
    default_source_task: str | None = None,
    default_split: str | None = None,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Validate and normalize one raw record.

    Accepts ms-swift style (``messages`` of ``{role, content}``, ``images``), LLaVA style
    (``conversations`` of ``{from: human|gpt, value}``, ``image``), OpenAI content parts, and the
    normalized schema itself. Images are bytes, ``{bytes, path}`` mappings, data URLs or base64 strings
    (readers have already replaced file paths with bytes or an :func:`image_error` marker).

    Args:
        raw: the record as parsed from its source.
        kind: ``"support"`` or ``"eval"``.
        source: file (or dataset) it came from, recorded in the quarantine row.
        position: its position in ``source`` (line, element or row index).
        cfg: limits and defaults; ``ReadConfig()`` when omitted.
        default_source_task: source_task for records without one (else ``cfg.source_task``, else the
            source's file name without suffix).
        default_split: split for evaluation records without one (else ``cfg.split``).

    Returns:
        ``(row, None)`` with a ``SUPPORT_SCHEMA`` / ``EVAL_SCHEMA`` dict, or ``(None, quarantine_row)``.
    """
    cfg = cfg or ReadConfig()
    raw_id = raw.get("id") if isinstance(raw, dict) else None
    try:
        if not isinstance(raw, dict):
            raise RecordError("<record>", "not an object", f"got {type(raw).__name__}")
        if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, (str, int))):
            raise RecordError("id", "wrong type", f"expected a string or integer, got {type(raw_id).__name__}")
        messages = _messages(raw, cfg)
        if not any(m["role"] == "user" for m in messages):
            raise RecordError("messages", "no user turn", "the conversation has no user question")
        if kind == "support" and (messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip()):
            raise RecordError(
                f"messages[{len(messages) - 1}]", "no assistant answer",
                f"the last turn is {messages[-1]['role']!r}" + (" and empty" if messages[-1]["role"] == "assistant" else ""),
            )
        images = _images(raw, cfg)
        messages = _place_images(messages, len(images), cfg)
        task = raw.get("source_task")
        if task is None:
            task = default_source_task or cfg.source_task or PurePath(source).stem or "unknown"
        task = _scalar_text(task, "source_task", cfg)
        row: dict[str, Any] = {
            "id": None,
            "source_task": task,
            "images": images,
            "messages": messages,
            "skills": _optional_str_list(raw.get("skills"), "skills", "wrong type", cfg),
            "metadata": _metadata(raw.get("metadata")),
        }
        if kind == "eval":
            row.update(_eval_fields(raw, cfg, default_split))
        elif kind != "support":
            raise ValueError(f"kind must be 'support' or 'eval', got {kind!r}")
        if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
            row["id"] = content_id(messages, images, row.get("answer"), row.get("choices"))
        else:
            row["id"] = _text(str(raw_id), "id", cfg)
        return row, None
    except RecordError as exc:
        rid = str(raw_id) if isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) else None
        if rid is not None:
            try:
                rid.encode("utf-8")
            except UnicodeEncodeError:
                rid = None
        return None, quarantine_row(source, position, exc.field, exc.reason, rid, raw, cfg)


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


def mark_duplicates_in_table(table: pa.Table, keepers: dict[str, tuple[str, int]]) -> pa.Table:
    """Quarantine valid rows whose id is in ``keepers`` but whose (source, position) is not the kept one.

    Args:
        table: read-schema rows.
        keepers: duplicated id -> (source, position) of the occurrence that is kept.

    Returns:
        The table with ``_error_field`` / ``_error_reason`` set on the other occurrences.
    """
    if not keepers or table.num_rows == 0:
        return table
    ids = table["id"].to_pylist()
    srcs = table["_source"].to_pylist()
    poss = table["_position"].to_pylist()
    fields = table["_error_field"].to_pylist()
    reasons = table["_error_reason"].to_pylist()
    changed = False
    for i, rid in enumerate(ids):
        if reasons[i] is not None or rid not in keepers:
            continue
        src, pos = keepers[rid]
        if (srcs[i], poss[i]) != (src, pos):
            fields[i] = "id"
            reasons[i] = f"duplicate id: {_short(rid, 80)!r} first seen at {src}:{pos}"
            changed = True
    if not changed:
        return table
    t = table.set_column(table.schema.get_field_index("_error_field"), "_error_field", pa.array(fields, pa.string()))
    return t.set_column(t.schema.get_field_index("_error_reason"), "_error_reason", pa.array(reasons, pa.string()))
