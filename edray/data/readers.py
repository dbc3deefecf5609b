"""Ray Data readers for supporting and evaluation samples, in every supported format.

Each input is cut into *read units* on the driver from metadata only (a Parquet row group, a JSONL byte
range, a LLaVA JSON file, a Hugging Face Arrow file, a Lance fragment); one Ray task per unit streams its
records, resolves image files, and calls :func:`edray.data.core.normalize_record`, yielding Arrow batches
of :func:`edray.data.core.read_schema`. Nothing is loaded whole into the driver.

Quarantined rows travel with the valid ones (``_error_reason`` is set) so a downstream pipeline reads the
pool once and splits each batch with :func:`split_batch`. Duplicate ids cannot be known inside one
streaming task: :func:`mark_duplicates` is a separate pass (used by :func:`read_and_split` and
``edray data inspect``); streaming sinks such as the index stage dedupe by id themselves.

Paths are local files or folders.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from edray.data.config import FORMATS, ReadConfig
from edray.data.core import (
    image_error,
    image_path_of,
    mark_duplicates_in_table,
    max_record_bytes,
    normalize_record,
    quarantine_row,
    raw_excerpt,
    read_row,
    read_schema,
    rows_to_table,
    split_quarantine,
)

_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_HF_MARKERS = ("state.json", "dataset_dict.json")
# Up to this many valid rows, duplicate ids are counted on the driver; above, by a Ray Data group-by.
_DRIVER_DEDUPE_ROWS = 2_000_000


# --- format detection -------------------------------------------------------------------------------


def detect_format(path: str | os.PathLike[str]) -> str:
    """Detect the format of a file or folder.

    Args:
        path: a ``.parquet`` / ``.jsonl`` / ``.json`` file, a ``.lance`` folder, a ``save_to_disk``
            folder, or a folder of Parquet / JSONL / JSON files.

    Returns:
        One of ``parquet``, ``jsonl``, ``llava``, ``hf``, ``lance``.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: nothing recognizable at the path.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix in (".parquet", ".pq"):
            return "parquet"
        if suffix in _JSONL_SUFFIXES:
            return "jsonl"
        if suffix == ".json":
            return "llava" if _first_char(p) == "[" else "jsonl"
        raise ValueError(f"cannot tell the format of {p} from its suffix {suffix!r}; pass --format")
    if p.suffix == ".lance" or (p / "_versions").is_dir():
        return "lance"
    if any((p / m).is_file() for m in _HF_MARKERS):
        return "hf"
    files = [f for f in p.rglob("*") if f.is_file() and not _hidden(f, p)]
    for fmt, suffixes in (("parquet", (".parquet", ".pq")), ("jsonl", _JSONL_SUFFIXES)):
        if any(f.suffix.lower() in suffixes for f in files):
            return fmt
    jsons = [f for f in files if f.suffix.lower() == ".json"]
    if jsons:
        return "llava" if _first_char(jsons[0]) == "[" else "jsonl"
    raise ValueError(f"no Parquet, JSONL, LLaVA JSON, Hugging Face or Lance data found in {p}")


def _first_char(p: Path) -> str:
    with p.open("rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return chr(head[0]) if head else ""


def _hidden(f: Path, root: Path) -> bool:
    return any(part.startswith((".", "_")) for part in f.relative_to(root).parts)


def _files(p: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if p.is_file():
        return [p]
    return sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes and not _hidden(f, p))


# --- planning: read units from metadata -------------------------------------------------------------


def _plan_units(path: Path, fmt: str, cfg: ReadConfig) -> list[dict[str, Any]]:
    if fmt == "parquet":
        return _plan_parquet(path)
    if fmt == "jsonl":
        return _plan_jsonl(path, cfg)
    if fmt == "llava":
        return [{"fmt": "llava", "path": str(f)} for f in _files(path, (".json",))]
    if fmt == "hf":
        return _plan_hf(path)
    if fmt == "lance":
        return _plan_lance(path)
    raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")


def _plan_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    units: list[dict[str, Any]] = []
    for f in _files(path, (".parquet", ".pq")):
        try:
            meta = pq.ParquetFile(f).metadata
        except Exception as exc:  # a corrupt footer: the whole file is reported, the others go on
            units.append({"fmt": "error", "path": str(f), "error": f"cannot read Parquet metadata: {exc}"})
            continue
        offset = 0
        for rg in range(meta.num_row_groups):
            units.append({"fmt": "parquet", "path": str(f), "row_group": rg, "offset": offset})
            offset += meta.row_group(rg).num_rows
    return units


def _plan_jsonl(path: Path, cfg: ReadConfig) -> list[dict[str, Any]]:
    units: list[dict[str, Any]] = []
    big: list[tuple[Path, list[tuple[int, int]]]] = []
    for f in _files(path, (*_JSONL_SUFFIXES, ".json")):
        size = f.stat().st_size
        if size <= cfg.chunk_bytes:
            units.append({"fmt": "jsonl", "path": str(f), "start": 0, "stop": size, "first_line": 0})
        else:
            ranges = [(s, min(s + cfg.chunk_bytes, size)) for s in range(0, size, cfg.chunk_bytes)]
            big.append((f, ranges))
    if big:
        # Line numbers of later chunks need the newline counts of the earlier ones: one cheap counting
        # pass in Ray tasks (the driver only sums one integer per chunk).
        import ray

        count = ray.remote(_count_newlines)
        refs = [[count.remote(str(f), s, e) for s, e in ranges] for f, ranges in big]
        for (f, ranges), chunk_refs in zip(big, refs):
            counts = ray.get(chunk_refs)
            before = 0
            for (s, e), n in zip(ranges, counts):
                units.append({"fmt": "jsonl", "path": str(f), "start": s, "stop": e, "first_line": before})
                before += n
    return units


def _count_newlines(path: str, start: int, stop: int) -> int:
    n = 0
    with open(path, "rb") as f:
        f.seek(start)
        left = stop - start
        while left > 0:
            buf = f.read(min(left, 8 << 20))
            if not buf:
                break
            n += buf.count(b"\n")
            left -= len(buf)
    return n


def _plan_hf(path: Path) -> list[dict[str, Any]]:
    units: list[dict[str, Any]] = []
    dd = path / "dataset_dict.json"
    if dd.is_file():
        try:
            splits = json.loads(dd.read_text())["splits"]
        except Exception as exc:
            return [{"fmt": "error", "path": str(dd), "error": f"cannot read dataset_dict.json: {exc}"}]
        for split in splits:
            units.extend(_plan_hf_dataset(path / split, split))
        return units
    return _plan_hf_dataset(path, None)


def _plan_hf_dataset(folder: Path, split: str | None) -> list[dict[str, Any]]:
    state_path = folder / "state.json"
    try:
        state = json.loads(state_path.read_text())
        files = [folder / d["filename"] for d in state["_data_files"]]
        split = split or state.get("_split")
    except Exception as exc:
        return [{"fmt": "error", "path": str(state_path), "error": f"cannot read the save_to_disk state: {exc}"}]
    task = folder.name if split is None else folder.parent.name
    return [{"fmt": "hf", "path": str(f), "split": split, "source_task": task} for f in files]


def _plan_lance(path: Path) -> list[dict[str, Any]]:
    import lance

    try:
        ds = lance.dataset(str(path))
        frags = ds.get_fragments()
    except Exception as exc:
        return [{"fmt": "error", "path": str(path), "error": f"cannot open Lance dataset: {exc}"}]
    units, offset = [], 0
    for frag in frags:
        units.append({"fmt": "lance", "path": str(path), "fragment": frag.fragment_id, "offset": offset})
        offset += frag.count_rows()
    return units


# --- reading one unit (inside a Ray task) -----------------------------------------------------------


def _resolve_images(raw: Any, base_dir: Path, cfg: ReadConfig) -> Any:
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
        entries[i] = _read_image_file(rel, base_dir, cfg)
        changed = True
    if not changed:
        return raw
    out = dict(raw)
    out[key] = entries[0] if single else entries
    return out


def _read_image_file(rel: str, base_dir: Path, cfg: ReadConfig) -> Any:
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


class _UnitReader:
    """Turns one read unit into batches of read-schema rows."""

    def __init__(self, kind: str, cfg: ReadConfig) -> None:
        self.kind = kind
        self.cfg = cfg
        self.rows: list[dict[str, Any]] = []

    def add(self, raw: Any, source: str, position: int | None, base_dir: Path, **defaults: Any) -> None:
        try:
            resolved = _resolve_images(raw, base_dir, self.cfg)
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
        for item in _iter_json_array(path, max_element_chars=max(64 << 20, 4 * self.cfg.max_image_bytes)):
            if isinstance(item, _JsonArrayError):
                self.bad(path, item.index, "<file>" if item.whole_file else "<record>", item.reason)
                return
            self.add(item, path, index, base_dir)
            index += 1
            yield from self.flush()


class _JsonArrayError:
    def __init__(self, index: int | None, reason: str, whole_file: bool = False) -> None:
        self.index, self.reason, self.whole_file = index, reason, whole_file


def _iter_json_array(path: str, max_element_chars: int, chunk_chars: int = 1 << 20) -> Iterator[Any]:
    """Stream the elements of a top-level JSON array without loading the file.

    Yields parsed elements, then at most one :class:`_JsonArrayError` after which nothing more can be read
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
            yield _JsonArrayError(None, "unreadable file: expected a JSON array of records ('[' first)", True)
            return
        pos += 1
        index = 0
        while True:
            if not skip_ws():
                yield _JsonArrayError(index, "invalid JSON: the array is not closed (truncated file?)", True)
                return
            if buf[pos] == "]":
                return
            if index > 0:
                if buf[pos] != ",":
                    yield _JsonArrayError(index, f"invalid JSON: expected ',' or ']' before element {index}; "
                                                 "the rest of the file cannot be read", True)
                    return
                pos += 1
                if not skip_ws():
                    yield _JsonArrayError(index, "invalid JSON: the array is not closed (truncated file?)", True)
                    return
            while True:
                try:
                    item, end = decoder.raw_decode(buf, pos)
                    if end < len(buf) or eof:
                        break
                except json.JSONDecodeError as exc:
                    truncated = exc.pos >= len(buf) - 1 or exc.msg.startswith("Unterminated string")
                    if eof or not truncated or len(buf) - pos > max_element_chars:
                        yield _JsonArrayError(index, f"invalid JSON: element {index}: {exc.msg} "
                                                     "(the rest of the file cannot be read)", True)
                        return
                if not more():
                    continue
            pos = end
            yield item
            index += 1


def _read_units(batch: pa.Table, kind: str, cfg: ReadConfig) -> Iterator[pa.Table]:
    reader = _UnitReader(kind, cfg)
    for text in batch["unit"].to_pylist():
        yield from reader.run(json.loads(text))


# --- public API -------------------------------------------------------------------------------------


def _resolve(kind: str | None, fmt: str | None, config: ReadConfig | None) -> tuple[str, str, ReadConfig]:
    cfg = config or ReadConfig()
    kind = kind or cfg.kind
    fmt = fmt or cfg.format
    if kind not in ("support", "eval"):
        raise ValueError(f"kind must be 'support' or 'eval', got {kind!r}")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return kind, fmt, cfg


def read_samples(
    path: str | os.PathLike[str],
    kind: str | None = None,
    fmt: str | None = None,
    config: ReadConfig | None = None,
) -> "ray.data.Dataset":  # noqa: F821
    """Read samples of any supported format as a Ray Dataset, valid and quarantined rows together.

    Args:
        path: file or folder (see :func:`detect_format`).
        kind: ``"support"`` or ``"eval"`` (default: ``config.kind``).
        fmt: ``auto``, ``parquet``, ``jsonl``, ``llava``, ``hf`` or ``lance`` (default: ``config.format``).
        config: limits and defaults.

    Returns:
        A lazy dataset whose rows have the ``SUPPORT_SCHEMA`` / ``EVAL_SCHEMA`` columns (nullable) plus
        ``_source``, ``_position``, ``_error_field``, ``_error_reason`` (null on valid rows) and ``_raw``.
        Duplicate ids are not marked yet (see :func:`mark_duplicates`).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: unknown kind or format, or a format that cannot be detected.
    """
    import ray

    kind, fmt, cfg = _resolve(kind, fmt, config)
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    if fmt == "auto":
        fmt = detect_format(p)
    units = _plan_units(p, fmt, cfg)
    schema = read_schema(kind)
    if not units:
        return ray.data.from_arrow(schema.empty_table())
    items = ray.data.from_items([{"unit": json.dumps(u)} for u in units], override_num_blocks=len(units))
    return items.map_batches(
        _read_units, batch_size=1, batch_format="pyarrow", fn_kwargs={"kind": kind, "cfg": cfg}, num_cpus=cfg.num_cpus
    )


def split_batch(batch: pa.Table, kind: str, stage: str = "read") -> tuple[pa.Table, pa.Table]:
    """Split a batch of :func:`read_samples` rows inside a downstream ``map_batches``.

    Args:
        batch: read-schema rows (``batch_format="pyarrow"``).
        kind: ``"support"`` or ``"eval"``.
        stage: the stage recorded in the quarantine rows.

    Returns:
        ``(valid, quarantine)``: valid rows cast exactly to ``SUPPORT_SCHEMA`` / ``EVAL_SCHEMA`` and
        ``QUARANTINE_SCHEMA`` rows.
    """
    return split_quarantine(batch, kind, stage)


def _keys_batch(batch: pa.Table) -> pa.Table:
    ok = batch.filter(pc.is_null(batch["_error_reason"]))
    return ok.select(["id", "_source", "_position"])


def _rows_with_ids(batch: pa.Table, ids: list[str]) -> pa.Table:
    return batch.filter(pc.is_in(batch["id"], value_set=pa.array(ids, pa.string())))


def mark_duplicates(ds: "ray.data.Dataset") -> "ray.data.Dataset":  # noqa: F821
    """Quarantine every valid row whose id was already seen, keeping the first by (source, position).

    A Ray Data pass projects the ids (materialized: ~50 bytes a row); up to 2 million rows they are
    counted on the driver, above that by a Ray Data group-by. A last pass marks the later occurrences.
    The input is read twice, so materialize it first when reading is costly.

    Args:
        ds: rows of :func:`read_samples`.

    Returns:
        The same rows, duplicates marked with field ``id`` and reason ``duplicate id: ...``.
    """
    import ray

    keys = ds.map_batches(_keys_batch, batch_format="pyarrow").materialize()
    n = keys.count()
    if n == 0:
        return ds
    if n <= _DRIVER_DEDUPE_ROWS:
        # Ids of a medium dataset fit the driver easily (~50 bytes each); a shuffle costs seconds.
        parts = [t for t in ray.get(keys.to_arrow_refs()) if t.num_rows]
        table = pa.concat_tables(parts)
        counts = pc.value_counts(table["id"])
        dup_ids = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
        if len(dup_ids) == 0:
            return ds
        hits = table.filter(pc.is_in(table["id"], value_set=dup_ids)).to_pandas()
    else:
        n_parts = max(1, min(256, keys.num_blocks()))
        counts_df = keys.groupby("id", num_partitions=n_parts).count().to_pandas()
        dup_list = sorted(counts_df.loc[counts_df["count()"] > 1, "id"])
        if not dup_list:
            return ds
        hits = keys.map_batches(_rows_with_ids, batch_format="pyarrow", fn_kwargs={"ids": dup_list}).to_pandas()
    hits = hits.sort_values(["_source", "_position"], kind="stable")
    firsts = hits.drop_duplicates("id")[["id", "_source", "_position"]]
    keepers = {rid: (src, int(pos)) for rid, src, pos in firsts.itertuples(index=False)}
    return ds.map_batches(mark_duplicates_in_table, batch_format="pyarrow", fn_kwargs={"keepers": keepers})


def _valid_part(batch: pa.Table, kind: str) -> pa.Table:
    return split_quarantine(batch, kind)[0]


def _quarantine_part(batch: pa.Table, kind: str) -> pa.Table:
    return split_quarantine(batch, kind)[1]


def read_and_split(
    path: str | os.PathLike[str],
    kind: str | None = None,
    fmt: str | None = None,
    config: ReadConfig | None = None,
) -> tuple["ray.data.Dataset", pa.Table]:  # noqa: F821
    """Read, mark duplicate ids, and split into valid rows and the quarantine table.

    Meant for small and medium data (the read is materialized in the object store once; the
    quarantine table is collected on the driver).

    Args:
        path, kind, fmt, config: as for :func:`read_samples`.

    Returns:
        ``(valid, quarantine)``: a dataset of ``SUPPORT_SCHEMA`` / ``EVAL_SCHEMA`` rows and a
        ``QUARANTINE_SCHEMA`` table.

    Raises:
        FileNotFoundError, ValueError: as for :func:`read_samples`.
    """
    import ray

    kind, fmt, cfg = _resolve(kind, fmt, config)
    ds = mark_duplicates(read_samples(path, kind, fmt, cfg).materialize()).materialize()
    valid = ds.map_batches(_valid_part, batch_format="pyarrow", fn_kwargs={"kind": kind})
    parts = ray.get(ds.map_batches(_quarantine_part, batch_format="pyarrow", fn_kwargs={"kind": kind}).to_arrow_refs())
    from edray.schemas import QUARANTINE_SCHEMA

    parts = [t for t in parts if t.num_rows]
    quarantine = pa.concat_tables(parts).cast(QUARANTINE_SCHEMA) if parts else QUARANTINE_SCHEMA.empty_table()
    return valid, quarantine


EVAL_REQUIRED_COLUMNS = ("id", "source_task", "images", "messages", "answer", "answer_type")


def read_parquet_rows(
    path: str | os.PathLike[str], required: Sequence[str], what: str, columns: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Rows of a small Parquet file or folder (a validation split, a selection) as dicts, in file order.

    For artifacts that fit in memory; the pool goes through :func:`read_samples`.

    Args:
        path: Parquet file or folder.
        required: columns that must be present.
        what: what the file is, for error messages ("validation set", "evaluation split").
        columns: read only these columns (default: all).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a required column is missing.
    """
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} {p} does not exist")
    table = pq.read_table(p)
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ValueError(f"{what} {p}: missing column(s) {missing}")
    if columns is not None:
        table = table.select(list(columns))
    return table.to_pylist()
