"""A streaming parser for one large top-level JSON array (a LLaVA JSON file), one element at a time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


class JsonArrayError:
    """Why an array stops being readable: the element index and whether the rest of the file is lost."""

    def __init__(self, index: int | None, reason: str, whole_file: bool = False) -> None:
        self.index, self.reason, self.whole_file = index, reason, whole_file


def iter_json_array(path: str, max_element_chars: int, chunk_chars: int = 1 << 20) -> Iterator[Any]:
    """Stream the elements of a top-level JSON array without loading the file.

    Yields parsed elements, then at most one :class:`JsonArrayError` after which nothing more can be read
    (JSON has no record boundaries to resynchronize on). Invalid UTF-8 bytes become lone surrogates, so
    the record holding them is quarantined as invalid UTF-8 on its own.
    """
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        buf, pos, eof = "", 0, False

        def more() -> bool:
            nonlocal buf, pos, eof
            chunk = f.read(chunk_chars)
            if not chunk:
                eof = True
                return False
            buf = buf[pos:] + chunk
            pos = 0
            return True

        def skip_ws() -> bool:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n\ufeff":
                    pos += 1
                if pos < len(buf):
                    return True
                if not more():
                    return False

        if not skip_ws() or buf[pos] != "[":
            yield JsonArrayError(None, "unreadable file: expected a JSON array of records ('[' first)", True)
            return
        pos += 1
        index = 0
        while True:
            if not skip_ws():
                yield JsonArrayError(index, "invalid JSON: the array is not closed (truncated file?)", True)
                return
            if buf[pos] == "]":
                return
            if index > 0:
                if buf[pos] != ",":
                    yield JsonArrayError(index, f"invalid JSON: expected ',' or ']' before element {index}; "
                                                 "the rest of the file cannot be read", True)
                    return
                pos += 1
                if not skip_ws():
                    yield JsonArrayError(index, "invalid JSON: the array is not closed (truncated file?)", True)
                    return
            while True:
                try:
                    item, end = decoder.raw_decode(buf, pos)
                    if end < len(buf) or eof:
                        break
                except json.JSONDecodeError as exc:
                    truncated = exc.pos >= len(buf) - 1 or exc.msg.startswith("Unterminated string")
                    if eof or not truncated or len(buf) - pos > max_element_chars:
                        yield JsonArrayError(index, f"invalid JSON: element {index}: {exc.msg} "
                                                     "(the rest of the file cannot be read)", True)
                        return
                if not more():
                    continue
            pos = end
            yield item
            index += 1
