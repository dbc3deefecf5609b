"""The train stage's data: the selection (joined with the pool) as validated, deterministically ordered
per-worker Ray datasets, and the quarantine of rows that cannot be trained on."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from edray.schemas import QUARANTINE_SCHEMA
from edray.train.config import TrainConfig

STAGE = "train"




def is_lance(path: Path) -> bool:
    """``path`` is a Lance dataset (a ``.lance`` folder or one holding ``_versions/``)."""
    return str(path).endswith(".lance") or (path.is_dir() and (path / "_versions").is_dir())


def _read_table_dataset(path: Path, columns: list[str] | None = None) -> Any:
    import ray

    if is_lance(path):
        return ray.data.read_lance(str(path), columns=columns)
    return ray.data.read_parquet(str(path), columns=columns)


def _read_ids(path: Path) -> list[str]:
    """The ``id`` column of the selection (small: ids only), read on the driver."""
    if is_lance(path):
        import lance

        table = lance.dataset(str(path)).to_table(columns=["id"])
    else:
        table = pq.read_table(path, columns=["id"])
    return [None if i is None else str(i) for i in table["id"].to_pylist()]


def _order_key(seed: int, row_id: str) -> int:
    """A seeded, input-order-independent position for a row (a hash, so no global shuffle is needed)."""
    digest = hashlib.blake2b(f"{seed}:{row_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@functools.lru_cache(maxsize=2)
def _load_processor(student: str, trust_remote_code: bool) -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(student, trust_remote_code=trust_remote_code)


def _check_rows(
    batch: pa.Table, ids: pa.Array | None, student: str, max_length: int, seed: int, trust_remote_code: bool
) -> pa.Table:
    """Ray Data batch function: keep the selected ids, collate each row alone, record the error if any.

    The processor is loaded once per Ray worker process (cached), not once per batch.
    """
    import pyarrow.compute as pc

    from edray.train.core import CollateError, collate_rows

    if ids is not None:
        batch = batch.filter(pc.is_in(batch["id"], value_set=ids))
    batch = batch.select(["id", "images", "messages"])
    processor = _load_processor(student, trust_remote_code)
    errors: list[str | None] = []
    for row in batch.to_pylist():
        try:
            collate_rows(processor, [row], max_length)
            errors.append(None)
        except CollateError as exc:
            errors.append(str(exc))
        except Exception as exc:  # the processor's own errors on malformed rows
            errors.append(f"row {row.get('id')}: {type(exc).__name__}: {exc}")
    order = [_order_key(seed, str(i)) for i in batch["id"].to_pylist()]
    batch = batch.append_column("_order", pa.array(order, pa.int64()))
    return batch.append_column("_error", pa.array(errors, pa.string()))


def _sort_by_order(batch: pa.Table) -> pa.Table:
    return batch.sort_by("_order")


def prepare_datasets(
    cfg: TrainConfig,
    student: Path,
    selection: Path,
    pool: Path | None,
) -> tuple[list[Any], pa.Table, int]:
    """Build one Ray dataset per worker from the selection, plus the quarantine table.

    Rows are joined from the pool by ``id`` when the selection holds ids only, checked by collating
    each alone (unreadable images, placeholder/image mismatches, rows over ``max_length`` and
    ids missing from the pool go to the quarantine), ordered by a seeded hash of their id (so the
    order never depends on the input's row order) and split into equal, deterministic shards: a
    resumed worker must see exactly the batches it saw before the failure, which Ray Data's dynamic
    ``streaming_split`` does not guarantee.

    Returns:
        ``(shards, quarantine, rows_per_worker)``.

    Raises:
        ValueError: the selection has no ``id`` column, repeats an id, needs a pool that was not
            given, or leaves fewer rows than one optimizer step per worker needs.
    """
    import ray
    from ray.data.expressions import col

    names = list(_read_table_dataset(selection).schema().names) if is_lance(selection) else pq.read_schema(
        next(iter(sorted(selection.rglob("*.parquet")))) if selection.is_dir() else selection
    ).names
    if "id" not in names:
        raise ValueError(f"selection {selection} has no 'id' column (columns: {', '.join(names)})")
    id_list = _read_ids(selection)
    if any(i is None for i in id_list):
        raise ValueError(f"selection {selection}: {sum(i is None for i in id_list)} rows have a null id")
    if len(set(id_list)) != len(id_list):
        seen: set[str] = set()
        dup = next(i for i in id_list if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise ValueError(f"selection {selection}: id {dup!r} appears more than once")
    if {"images", "messages"} <= set(names):
        source, ds, wanted = selection, _read_table_dataset(selection, ["id", "images", "messages"]), None
    elif pool is None:
        raise ValueError(f"selection {selection} holds ids only (no images/messages columns): give the supporting pool")
    else:
        source, ds = pool, _read_table_dataset(pool, ["id", "images", "messages"])
        wanted = pa.array(id_list, pa.string())
    checked = (
        ds.map_batches(
            _check_rows,
            batch_format="pyarrow",
            batch_size=256,
            fn_kwargs={
                "ids": wanted,
                "student": str(student),
                "max_length": cfg.max_length,
                "seed": cfg.seed,
                "trust_remote_code": cfg.trust_remote_code,
            },
        )
        # One in-memory sort task instead of Dataset.sort: a distributed sort spawns hundreds of
        # shuffle tasks, far more than a selection (10K-100K rows) needs.
        .repartition(1)
        .map_batches(_sort_by_order, batch_format="pyarrow", batch_size=None)
        .materialize()
    )
    meta = checked.select_columns(["id", "_error"]).to_arrow_refs()
    meta_tab = pa.concat_tables(ray.get(meta)) if meta else pa.table({"id": [], "_error": []})
    quarantine_rows: list[dict[str, Any]] = []
    found = set(meta_tab["id"].to_pylist())
    for i in id_list:
        if i not in found:
            quarantine_rows.append(_quarantine(i, str(source), "id", "id not found in the supporting pool"))
    n_bad = 0
    for i, err in zip(meta_tab["id"].to_pylist(), meta_tab["_error"].to_pylist()):
        if err is not None:
            n_bad += 1
            field = "images" if "image" in err else "messages"
            quarantine_rows.append(_quarantine(i, str(source), field, err))
    n_good = meta_tab.num_rows - n_bad
    rows_per_worker = n_good // cfg.num_workers
    if rows_per_worker < cfg.batch_size * cfg.grad_accum:
        raise ValueError(
            f"{n_good} trainable rows ({len(quarantine_rows)} quarantined) give {rows_per_worker} per worker, fewer "
            f"than one optimizer step needs (batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum})"
        )
    good = checked.filter(expr=col("_error").is_null()).select_columns(["id", "images", "messages"])
    shards = good.split(cfg.num_workers, equal=True)
    quarantine = pa.Table.from_pylist(quarantine_rows, schema=QUARANTINE_SCHEMA)
    return shards, quarantine, rows_per_worker


def _quarantine(record_id: str, source: str, field: str, reason: str) -> dict[str, Any]:
    return {"record_id": record_id, "source": source, "position": None, "field": field, "reason": reason, "stage": STAGE, "raw": None}
