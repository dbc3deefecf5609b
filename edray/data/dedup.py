"""Duplicate ids: the first occurrence by (source, position) is kept, later ones are quarantined.

Duplicates cannot be known inside one streaming read task, so :func:`mark_duplicates` is a separate Ray
Data pass over :func:`edray.data.readers.read_samples` rows (used by ``read_and_split`` and ``edray data
inspect``); :func:`mark_duplicates_in_table` is its pure per-batch part. Streaming sinks such as the
index stage dedupe by id themselves.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from edray.data.quarantine import shorten

# Up to this many valid rows, duplicate ids are counted on the driver; above, by a Ray Data group-by.
_DRIVER_DEDUPE_ROWS = 2_000_000


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


def mark_duplicates_in_table(table: pa.Table, keepers: dict[str, tuple[str, int]]) -> pa.Table:
    """Quarantine valid rows whose id is in ``keepers`` but whose (source, position) is not the kept one.

    Args:
        table: read-schema rows.
        keepers: duplicated id -> (source, position) of the occurrence that is kept.

    Returns:
        The table with ``_error_field`` / ``_error_reason`` set on the other occurrences.
    """
    if not keepers or table.num_rows == 0:
        return table
    ids = table["id"].to_pylist()
    srcs = table["_source"].to_pylist()
    poss = table["_position"].to_pylist()
    fields = table["_error_field"].to_pylist()
    reasons = table["_error_reason"].to_pylist()
    changed = False
    for i, rid in enumerate(ids):
        if reasons[i] is not None or rid not in keepers:
            continue
        src, pos = keepers[rid]
        if (srcs[i], poss[i]) != (src, pos):
            fields[i] = "id"
            reasons[i] = f"duplicate id: {shorten(rid, 80)!r} first seen at {src}:{pos}"
            changed = True
    if not changed:
        return table
    t = table.set_column(table.schema.get_field_index("_error_field"), "_error_field", pa.array(fields, pa.string()))
    return t.set_column(t.schema.get_field_index("_error_reason"), "_error_reason", pa.array(reasons, pa.string()))
