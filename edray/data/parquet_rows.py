"""Small Parquet artifacts read into memory: evaluation splits, selections.

For artifacts that fit in memory (a validation split, a test split, a selection); the pool goes through
:func:`edray.data.readers.read_samples`. :func:`read_eval_rows` is the one reader of evaluation rows that
the diagnose and evaluate stages share.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


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


def read_eval_rows(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    what: str = "evaluation split",
    *,
    split: str | None = None,
    task: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Evaluation rows (``EVAL_SCHEMA``) from one or more Parquet files or folders, sorted by id.

    Every stage that answers evaluation rows keys its outputs by id, so an id that repeats among the kept rows (within one
    file or across files) is refused here rather than silently merged later.

    Args:
        paths: a Parquet file or folder, or several.
        what: what the rows are, for error messages ("validation set", "evaluation split").
        split: keep only rows of this split (``None``: all).
        task: keep only rows of this ``source_task`` (``None``: all).
        limit: keep the first N rows (by id), after filtering.

    Returns:
        Row dicts with string ids, sorted by id.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a required column is missing, an id repeats, or no row is left.
    """
    many = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    names = str(many[0]) if len(many) == 1 else [str(p) for p in many]
    rows: list[dict[str, Any]] = []
    for path in many:
        found = read_parquet_rows(path, EVAL_REQUIRED_COLUMNS, f"{what} (EVAL_SCHEMA)")
        rows.extend(r for r in found if (split is None or r.get("split") == split) and (task is None or r["source_task"] == task))
    seen: set[str] = set()
    for r in rows:
        r["id"] = str(r["id"])
        if r["id"] in seen:
            raise ValueError(f"{what} {names}: id {r['id']!r} appears more than once")
        seen.add(r["id"])
    rows.sort(key=lambda r: r["id"])
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        kept = " and ".join(f"{k} {v!r}" for k, v in (("split", split), ("task", task)) if v is not None)
        raise ValueError(f"{what} {names}: no rows" + (f" of {kept}" if kept else ""))
    return rows
