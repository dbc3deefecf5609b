"""Ray Data readers for supporting and evaluation samples, in every supported format.

Each input is cut into *read units* on the driver from metadata only (:mod:`edray.data.formats`); one Ray
task per unit streams its records, resolves image files, and calls
:func:`edray.data.core.normalize_record` (:mod:`edray.data.units`), yielding Arrow batches of
:func:`edray.data.quarantine.read_schema`. Nothing is loaded whole into the driver.

Quarantined rows travel with the valid ones (``_error_reason`` is set) so a downstream pipeline reads the
pool once and splits each batch with :func:`split_batch`. Duplicate ids cannot be known inside one
streaming task: :func:`edray.data.dedup.mark_duplicates` is a separate pass (used by
:func:`read_and_split` and ``edray data inspect``); streaming sinks such as the index stage dedupe by id
themselves. Small Parquet artifacts (evaluation splits, selections) are read by
:mod:`edray.data.parquet_rows`.

Paths are local files or folders.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa

from edray.data.config import FORMATS, ReadConfig
from edray.data.dedup import mark_duplicates
from edray.data.formats import detect_format, plan_units
from edray.data.quarantine import read_schema, split_quarantine
from edray.data.units import read_units


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
    units = plan_units(p, fmt, cfg)
    schema = read_schema(kind)
    if not units:
        return ray.data.from_arrow(schema.empty_table())
    items = ray.data.from_items([{"unit": json.dumps(u)} for u in units], override_num_blocks=len(units))
    return items.map_batches(
        read_units, batch_size=1, batch_format="pyarrow", fn_kwargs={"kind": kind, "cfg": cfg}, num_cpus=cfg.num_cpus
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
