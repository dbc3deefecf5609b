"""Pure normalization of raw records into supporting / evaluation samples.

No Ray, no file or network I/O: the readers (``readers.py``) turn every input format into plain Python
dicts (image files already read into bytes, or replaced by an image-error marker when they could not be
read, :mod:`edray.data.images`) and call :func:`normalize_record` on each. A record either becomes one row
of ``SUPPORT_SCHEMA`` / ``EVAL_SCHEMA`` or one quarantine row (:mod:`edray.data.quarantine`) naming the
offending field and the reason.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePath
from typing import Any

from edray.data.config import ReadConfig
from edray.data.images import check_image, decode_image_entry
from edray.data.quarantine import RecordError, quarantine_row, shorten
from edray.schemas import ANSWER_TYPES, IMAGE_PLACEHOLDER

_ROLE_MAP = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}


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
                f"{where}.role", "unknown role", f"{shorten(role, 40)!r} (allowed: system, user, assistant; LLaVA: human, gpt)"
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
        data = decode_image_entry(entry, field)
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
            raise RecordError(f"{field}[{i}]", category, f"expected a non-empty string, got {shorten(repr(v), 40)}")
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
        raise RecordError("answer_type", "bad answer_type", f"{shorten(repr(answer_type), 40)} (allowed: {', '.join(ANSWER_TYPES)})")
    if answer_type == "multiple_choice":
        if not choices:
            raise RecordError("choices", "bad choices", "multiple_choice needs a list of choices")
        letters = [chr(ord("A") + i) for i in range(len(choices))]
        if answer.strip().upper() not in letters and answer not in choices:
            raise RecordError(
                "answer", "answer not in choices", f"{shorten(answer, 40)!r} is not one of {letters[0]}-{letters[-1]} nor a choice"
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
