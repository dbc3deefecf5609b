"""Image entries of a record: file paths read into bytes, data URLs and base64 decoded, limits checked.

Readers call :func:`resolve_image_files` inside their Ray task, so a record's image paths become bytes (or
an :func:`image_error` marker when the file cannot be read) before :func:`edray.data.core.normalize_record`
sees the record; :func:`decode_image_entry` and :func:`check_image` then turn each entry into checked
encoded bytes or a :class:`~edray.data.quarantine.RecordError`.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from pathlib import Path
from typing import Any

from edray.data.config import ReadConfig
from edray.data.quarantine import RecordError, shorten

IMAGE_ERROR_KEY = "__edray_image_error__"
_IMAGE_SIGNATURES = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"BM", b"II*\x00", b"MM\x00*")
_BASE64_RE = re.compile(r"^[A-Za-z0-9+/=\s_-]+$")


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


def decode_image_entry(value: Any, field: str) -> bytes:
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
            raise RecordError(field, "remote image", f"{shorten(s)} (download it and give a path)")
        if s.startswith("data:"):
            header, sep, data = s.partition(",")
            if not sep or ";base64" not in header:
                raise RecordError(field, "invalid base64", f"data URL without ';base64,': {shorten(s)}")
            s = data
        elif not _looks_like_base64(s):
            raise RecordError(field, "image not found", shorten(s))
        cleaned = re.sub(r"\s+", "", s)
        try:
            return base64.b64decode(cleaned, validate=True)
        except (binascii.Error, ValueError) as exc:
            if re.fullmatch(r"[A-Za-z0-9_=-]+", cleaned):
                try:
                    return base64.urlsafe_b64decode(cleaned)
                except (binascii.Error, ValueError):
                    pass
            raise RecordError(field, "invalid base64", f"{exc}: {shorten(s, 60)}") from None
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


def resolve_image_files(raw: Any, base_dir: Path, cfg: ReadConfig) -> Any:
    """Replace image file paths in a raw record by their bytes (or an image-error marker)."""
    if not isinstance(raw, dict):
        return raw
    key = "images" if raw.get("images") is not None else "image"
    value = raw.get(key)
    if value is None:
        return raw
    single = not isinstance(value, (list, tuple))
    entries = [value] if single else list(value)
    changed = False
    for i, entry in enumerate(entries):
        rel = image_path_of(entry)
        if rel is None:
            continue
        entries[i] = read_image_file(rel, base_dir, cfg)
        changed = True
    if not changed:
        return raw
    out = dict(raw)
    out[key] = entries[0] if single else entries
    return out


def read_image_file(rel: str, base_dir: Path, cfg: ReadConfig) -> Any:
    p = Path(rel)
    if not p.is_absolute():
        p = Path(cfg.image_root or base_dir) / p
    try:
        size = p.stat().st_size
        if not p.is_file():
            return image_error("image unreadable", f"{rel} is not a file")
        if size > cfg.max_image_bytes:
            return image_error("image too large", f"{rel}: {size} bytes > max_image_bytes={cfg.max_image_bytes}")
        return p.read_bytes()
    except FileNotFoundError:
        return image_error("image not found", f"{rel} (looked in {p.parent})")
    except OSError as exc:
        return image_error("image unreadable", f"{rel}: {exc.strerror or exc}")
