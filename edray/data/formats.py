"""Input formats: which one a path holds, and how it is cut into read units from metadata only.

A read unit is a Parquet row group, a JSONL byte range, a LLaVA JSON file, a Hugging Face Arrow file or
a Lance fragment; one Ray task reads each (:mod:`edray.data.units`). Planning reads footers, state files
and fragment lists, never records, so nothing is loaded whole into the driver.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from edray.data.config import FORMATS, ReadConfig

JSONL_SUFFIXES = (".jsonl", ".ndjson")
_HF_MARKERS = ("state.json", "dataset_dict.json")


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
        if suffix in JSONL_SUFFIXES:
            return "jsonl"
        if suffix == ".json":
            return "llava" if _first_char(p) == "[" else "jsonl"
        raise ValueError(f"cannot tell the format of {p} from its suffix {suffix!r}; pass --format")
    if p.suffix == ".lance" or (p / "_versions").is_dir():
        return "lance"
    if any((p / m).is_file() for m in _HF_MARKERS):
        return "hf"
    files = [f for f in p.rglob("*") if f.is_file() and not _hidden(f, p)]
    for fmt, suffixes in (("parquet", (".parquet", ".pq")), ("jsonl", JSONL_SUFFIXES)):
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


def list_files(p: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if p.is_file():
        return [p]
    return sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes and not _hidden(f, p))


# --- planning: read units from metadata -------------------------------------------------------------


def plan_units(path: Path, fmt: str, cfg: ReadConfig) -> list[dict[str, Any]]:
    """The read units of ``path`` in format ``fmt`` (a unit that cannot be planned has ``fmt: error``).

    Raises:
        ValueError: unknown format.
    """
    if fmt == "parquet":
        return _plan_parquet(path)
    if fmt == "jsonl":
        return _plan_jsonl(path, cfg)
    if fmt == "llava":
        return [{"fmt": "llava", "path": str(f)} for f in list_files(path, (".json",))]
    if fmt == "hf":
        return _plan_hf(path)
    if fmt == "lance":
        return _plan_lance(path)
    raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")


def _plan_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    units: list[dict[str, Any]] = []
    for f in list_files(path, (".parquet", ".pq")):
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
    for f in list_files(path, (*JSONL_SUFFIXES, ".json")):
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
