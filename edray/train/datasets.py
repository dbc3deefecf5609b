"""The train stage's data: the selection (joined with the pool) as validated, deterministically ordered
per-worker Ray datasets, and the quarantine of rows that cannot be trained on."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from edray.rundir import version_stamp
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

    A selection smaller than one optimizer step on every worker (``batch_size x grad_accum x
    num_workers`` rows) is repeated whole until it fills one (:func:`repeats_needed`), so a small budget
    trains for ``max_steps`` like a large one.

    Returns:
        ``(shards, quarantine, rows_per_worker)``; ``rows_per_worker`` counts repeated rows.

    Raises:
        ValueError: the selection has no ``id`` column, repeats an id, needs a pool that was not
            given, or leaves no trainable row.
    """
    import ray
    from ray.data.expressions import col

    names, id_list = _selection_ids(selection)
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
    quarantine, n_good = _quarantine_table(cfg, id_list, meta_tab, source)
    good = checked.filter(expr=col("_error").is_null()).select_columns(["id", "images", "messages"])
    reps = repeats_needed(n_good, cfg)
    if reps > 1:
        good = good.materialize()
        good = good.union(*[good] * (reps - 1))
    shards = good.split(cfg.num_workers, equal=True)
    return shards, quarantine, n_good * reps // cfg.num_workers


def prepare_local(cfg: TrainConfig, student: Path, selection: Path, pool: Path | None) -> tuple[pa.Table, pa.Table, int]:
    """The selection as one in-memory table for a one-worker run in this process (no Ray Data).

    The same checks, order and quarantine as :func:`prepare_datasets`. The pool's rows and each row's
    check result are kept for the process (see :func:`_pool_rows`), so arms trained one after another
    in one process read and check the pool once.

    Returns:
        ``(rows, quarantine, rows_per_worker)``; ``rows`` holds ``id, images, messages`` of the
        trainable rows in their seeded order, repeated whole when fewer than one optimizer step
        (:func:`repeats_needed`).

    Raises:
        ValueError: as :func:`prepare_datasets`.
    """
    names, id_list = _selection_ids(selection)
    if {"images", "messages"} <= set(names):
        source = selection
        table = (_lance_table(selection) if is_lance(selection) else pq.read_table(selection)).select(["id", "images", "messages"])
    elif pool is None:
        raise ValueError(f"selection {selection} holds ids only (no images/messages columns): give the supporting pool")
    else:
        source = pool
        table = _pool_rows(str(pool), id_list)
    errors = _row_errors(table, str(student), cfg.max_length, cfg.trust_remote_code, str(source))
    order = [_order_key(cfg.seed, str(i)) for i in table["id"].to_pylist()]
    meta_tab = pa.table({"id": table["id"], "_error": pa.array(errors, pa.string())})
    quarantine, n_good = _quarantine_table(cfg, id_list, meta_tab, source)
    keep = pa.array([e is None for e in errors], pa.bool_())
    good = table.append_column("_order", pa.array(order, pa.int64())).filter(keep).sort_by("_order")
    good = good.select(["id", "images", "messages"])
    reps = repeats_needed(n_good, cfg)
    if reps > 1:
        good = pa.concat_tables([good] * reps)
    return good, quarantine, good.num_rows


def repeats_needed(n_rows: int, cfg: TrainConfig) -> int:
    """How many whole copies of ``n_rows`` trainable rows fill one optimizer step on every worker.

    Fair arms train the same number of optimizer steps (``max_steps``) at every budget; a budget
    smaller than one step's rows (e.g. 2 % of a small pool at batch 32) would otherwise have no step
    at all. Each epoch still visits the copies in a fresh order.
    """
    need = cfg.batch_size * cfg.grad_accum * cfg.num_workers
    return max(1, -(-need // max(1, n_rows)))


def _selection_ids(selection: Path) -> tuple[list[str], list[str]]:
    """The selection's column names and its ids, checked: an ``id`` column, no null, no repeat."""
    names = list(_lance_schema_names(selection)) if is_lance(selection) else pq.read_schema(
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
    return names, id_list


def _quarantine_table(cfg: TrainConfig, id_list: list[str], meta_tab: pa.Table, source: Path) -> tuple[pa.Table, int]:
    """The quarantine (ids not found, rows that do not collate) and the number of trainable rows.

    Raises:
        ValueError: no trainable row is left.
    """
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
    if n_good == 0:
        first = f" (first reason: {quarantine_rows[0]['reason']})" if quarantine_rows else ""
        raise ValueError(f"no trainable rows: {len(id_list)} selected, {len(quarantine_rows)} quarantined{first}")
    return pa.Table.from_pylist(quarantine_rows, schema=QUARANTINE_SCHEMA), n_good


def _lance_schema_names(path: Path) -> list[str]:
    import lance

    return list(lance.dataset(str(path)).schema.names)


def _lance_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    import lance

    return lance.dataset(str(path)).to_table(columns=columns)


_POOLS: dict[tuple[str, int, int], pa.Table] = {}
_CHECKED: dict[tuple[Any, ...], dict[str, str | None]] = {}


# Pools up to this size on disk are kept in memory by the process that trains in process (the arms a
# trial process runs one after another then read them once); larger pools are read per selection.
POOL_CACHE_BYTES = 1 << 30


def _pool_rows(pool: str, ids: list[str]) -> pa.Table:
    """The pool's ``id, images, messages`` rows of ``ids`` (a small pool is read once per process)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    path, columns = Path(pool), ["id", "images", "messages"]
    wanted = pa.array(ids, pa.string())
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    if size > POOL_CACHE_BYTES:
        if is_lance(path):
            import lance

            return lance.dataset(str(path)).to_table(columns=columns, filter=pc.field("id").isin(wanted))
        return pads.dataset(str(path), format="parquet").to_table(columns=columns, filter=pc.field("id").isin(wanted))
    key = version_stamp(pool)
    if key not in _POOLS:
        _POOLS.clear()
        _POOLS[key] = _lance_table(path, columns) if is_lance(path) else pq.read_table(pool, columns=columns)
    whole = _POOLS[key]
    return whole.filter(pc.is_in(whole["id"], value_set=wanted))


def _row_errors(table: pa.Table, student: str, max_length: int, trust_remote_code: bool, source: str) -> list[str | None]:
    """Each row's collate error (``None`` when it trains), remembered per version of the student folder
    and of the rows' source file, and per row id."""
    from edray.train.core import CollateError, collate_rows

    key = (version_stamp(student), max_length, trust_remote_code, version_stamp(source))
    if key not in _CHECKED and len(_CHECKED) > 8:
        _CHECKED.clear()
    known = _CHECKED.setdefault(key, {})
    processor = _load_processor(student, trust_remote_code)
    out: list[str | None] = []
    for row in table.to_pylist():
        rid = str(row["id"])
        if rid not in known:
            try:
                collate_rows(processor, [row], max_length)
                known[rid] = None
            except CollateError as exc:
                known[rid] = str(exc)
            except Exception as exc:  # the processor's own errors on malformed rows
                known[rid] = f"row {rid}: {type(exc).__name__}: {exc}"
        out.append(known[rid])
    return out


def _quarantine(record_id: str, source: str, field: str, reason: str) -> dict[str, Any]:
    return {"record_id": record_id, "source": source, "position": None, "field": field, "reason": reason, "stage": STAGE, "raw": None}
