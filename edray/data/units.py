"""Reading one read unit inside a Ray task: records streamed, image files resolved, rows normalized.

Each unit (planned by :func:`edray.data.formats.plan_units`) yields Arrow batches of
:func:`edray.data.quarantine.read_schema` rows, valid and quarantined together; a file that breaks
mid-read costs the rest of its unit as one quarantine row, never the whole read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from edray.data.config import ReadConfig
from edray.data.core import max_record_bytes, normalize_record
from edray.data.images import resolve_image_files
from edray.data.json_stream import JsonArrayError, iter_json_array
from edray.data.quarantine import quarantine_row, raw_excerpt, read_row, rows_to_table


class UnitReader:
    """Turns one read unit into batches of read-schema rows."""

    def __init__(self, kind: str, cfg: ReadConfig) -> None:
        self.kind = kind
        self.cfg = cfg
        self.rows: list[dict[str, Any]] = []

    def add(self, raw: Any, source: str, position: int | None, base_dir: Path, **defaults: Any) -> None:
        try:
            resolved = resolve_image_files(raw, base_dir, self.cfg)
            row, qrow = normalize_record(resolved, self.kind, source, position, self.cfg, **defaults)
        except Exception as exc:  # a shape no rule anticipated must cost one record, not the read
            self.bad(source, position, "<record>", f"invalid record: {type(exc).__name__}: {exc}", raw)
            return
        if qrow is not None and resolved is not raw:
            qrow["raw"] = raw_excerpt(raw, self.cfg.raw_chars)
        self.rows.append(read_row(row, qrow, self.kind, source, position))

    def bad(self, source: str, position: int | None, field: str | None, reason: str, raw: Any = None) -> None:
        q = quarantine_row(source, position, field, reason, None, raw, self.cfg)
        self.rows.append(read_row(None, q, self.kind, source, position))

    def flush(self, force: bool = False) -> Iterator[pa.Table]:
        if self.rows and (force or len(self.rows) >= self.cfg.batch_rows):
            table = rows_to_table(self.rows, self.kind)
            self.rows = []
            yield table

    def run(self, unit: dict[str, Any]) -> Iterator[pa.Table]:
        path = unit["path"]
        try:
            yield from getattr(self, f"_read_{unit['fmt']}")(unit)
        except Exception as exc:
            # A file that breaks mid-read (truncated, corrupt page): what was read stays, the rest of
            # the unit is reported as one quarantine row instead of failing the whole dataset.
            self.bad(path, None, "<file>", f"unreadable file: {type(exc).__name__}: {exc}")
        yield from self.flush(force=True)

    def _read_error(self, unit: dict[str, Any]) -> Iterator[pa.Table]:
        self.bad(unit["path"], None, "<file>", f"unreadable file: {unit['error']}")
        return iter(())

    def _read_arrow_batches(
        self, batches: Iterator[pa.RecordBatch], source: str, offset: int, base_dir: Path, **defaults: Any
    ) -> Iterator[pa.Table]:
        pos = offset
        for batch in batches:
            for raw in batch.to_pylist():
                self.add(raw, source, pos, base_dir, **defaults)
                pos += 1
                yield from self.flush()

    def _read_parquet(self, unit: dict[str, Any]) -> Iterator[pa.Table]:
        import pyarrow.parquet as pq

        f = pq.ParquetFile(unit["path"])
        batches = f.iter_batches(batch_size=self.cfg.batch_rows, row_groups=[unit["row_group"]])
        yield from self._read_arrow_batches(batches, unit["path"], unit["offset"], Path(unit["path"]).parent)

    def _read_hf(self, unit: dict[str, Any]) -> Iterator[pa.Table]:
        path = unit["path"]
        with pa.memory_map(path) as source:
            try:
                reader = pa.ipc.open_stream(source)
            except pa.ArrowInvalid:
                source.seek(0)
                reader = pa.ipc.open_file(source)
                reader = iter(reader.get_batch(i) for i in range(reader.num_record_batches))
            yield from self._read_arrow_batches(
                iter(reader), path, 0, Path(path).parent,
                default_source_task=unit["source_task"], default_split=unit["split"],
            )

    def _read_lance(self, unit: dict[str, Any]) -> Iterator[pa.Table]:
        import lance  # imported in the worker: LanceDB's fork support is experimental

        frag = lance.dataset(unit["path"]).get_fragment(unit["fragment"])
        batches = frag.to_batches(batch_size=self.cfg.batch_rows)
        yield from self._read_arrow_batches(batches, unit["path"], unit["offset"], Path(unit["path"]).parent)

    def _parse_line(self, line: bytes, source: str, line_no: int, base_dir: Path) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.bad(source, line_no, "<record>",
                     f"invalid UTF-8: byte {line[exc.start]:#04x} at offset {exc.start} of the line",
                     line.decode("utf-8", "backslashreplace")[: self.cfg.raw_chars])
            return
        if not text.strip():
            return  # a blank line holds no record
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            self.bad(source, line_no, "<record>", f"invalid JSON: {exc}", text[: self.cfg.raw_chars])
            return
        self.add(raw, source, line_no, base_dir)

    def _read_jsonl(self, unit: dict[str, Any]) -> Iterator[pa.Table]:
        path, start, stop = unit["path"], unit["start"], unit["stop"]
        base_dir = Path(path).parent
        line_no = unit["first_line"]
        limit = max_record_bytes(self.cfg)
        with open(path, "rb") as f:
            if start > 0:
                # The line that straddles `start` belongs to the previous chunk.
                f.seek(start - 1)
                skipped = f.readline(1 << 20)
                straddles = skipped != b"\n"
                while skipped and not skipped.endswith(b"\n"):
                    skipped = f.readline(1 << 20)
                if straddles:
                    line_no += 1
            while f.tell() < stop:
                line = f.readline(limit + 1)
                if not line:
                    break
                if len(line) > limit and not line.endswith(b"\n"):
                    # Never hold an unbounded line in memory: skip to its end and report it.
                    size = len(line)
                    while line and not line.endswith(b"\n"):
                        line = f.readline(1 << 20)
                        size += len(line)
                    self.bad(path, line_no, "<record>", f"record too large: line of {size} bytes > {limit} bytes "
                             "(the most the image and text limits allow)", None)
                else:
                    self._parse_line(line.rstrip(b"\r\n"), path, line_no, base_dir)
                line_no += 1
                yield from self.flush()

    def _read_llava(self, unit: dict[str, Any]) -> Iterator[pa.Table]:
        path = unit["path"]
        base_dir = Path(path).parent
        index = 0
        for item in iter_json_array(path, max_element_chars=max(64 << 20, 4 * self.cfg.max_image_bytes)):
            if isinstance(item, JsonArrayError):
                self.bad(path, item.index, "<file>" if item.whole_file else "<record>", item.reason)
                return
            self.add(item, path, index, base_dir)
            index += 1
            yield from self.flush()


def read_units(batch: pa.Table, kind: str, cfg: ReadConfig) -> Iterator[pa.Table]:
    """``map_batches`` body: read every unit of ``batch`` (a JSON-encoded ``unit`` column)."""
    reader = UnitReader(kind, cfg)
    for text in batch["unit"].to_pylist():
        yield from reader.run(json.loads(text))
