"""The LanceDB side of the index: connect, commit batches (one writer per table), the annotation
cache table, and the vector / full-text / id indexes.

``lancedb`` is imported inside each function: importing it in a process that Ray later forks makes
LanceDB warn that fork support is experimental, and Ray workers open their own connection anyway.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from edray.index.core import CACHE_SCHEMA, VectorIndexPlan

ID_INDEX = "id_idx"
FTS_INDEX = "skill_text_idx"
VECTOR_INDEX = "vector_idx"
KEY_INDEX = "key_idx"


def connect(uri: str, storage_options: dict[str, str] | None = None) -> Any:
    """Open a LanceDB database: a local folder, or an object-store URI with its storage options.

    Args:
        uri: ``/path/to/db``, ``s3://bucket/prefix``...
        storage_options: passed to LanceDB unchanged (credentials come from the environment).

    Returns:
        A ``lancedb.DBConnection``.
    """
    import lancedb

    return lancedb.connect(uri, storage_options=storage_options or None)


def open_table(db: Any, name: str) -> Any | None:
    """The table ``name``, or ``None`` when it does not exist yet."""
    if name not in _table_names(db):
        return None
    return db.open_table(name)


def _table_names(db: Any) -> list[str]:
    listed = db.list_tables()
    names = getattr(listed, "tables", listed)
    return list(names)


def committed_ids(table: Any | None) -> pa.Array:
    """Every id already in the table (one column scan), as a string array."""
    if table is None:
        return pa.array([], pa.string())
    ids = table.to_lance().to_table(columns=["id"]).column("id")
    return ids.combine_chunks() if ids.num_chunks else pa.array([], pa.string())


def commit_rows(db: Any, name: str, rows: pa.Table, key: str = "id") -> tuple[Any, int]:
    """Insert the rows whose ``key`` is not in the table yet; create the table on first use.

    ``merge_insert`` with insert-if-not-matched makes each commit idempotent: a batch committed twice
    (a re-run after a crash between commit and bookkeeping) adds nothing the second time.

    Args:
        db: the LanceDB connection.
        name: table name.
        rows: rows to add; ids must be unique within ``rows``.
        key: the id column.

    Returns:
        ``(table, rows_inserted)``.
    """
    table = open_table(db, name)
    if table is None:
        try:
            table = db.create_table(name, data=rows)
            return table, rows.num_rows
        except (ValueError, OSError) as exc:  # created meanwhile: fall through to merge
            if "exist" not in str(exc).lower():
                raise
            table = db.open_table(name)
    result = table.merge_insert(key).when_not_matched_insert_all().execute(rows)
    return table, int(result.num_inserted_rows)


def lookup_cache(table: Any | None, keys: list[str]) -> dict[str, list[str]]:
    """Annotations already cached for ``keys`` (missing keys are absent from the result)."""
    if table is None or not keys:
        return {}
    quoted = ", ".join("'" + k.replace("'", "''") + "'" for k in keys)
    found = table.to_lance().to_table(columns=["key", "skills"], filter=f"key IN ({quoted})")
    return dict(zip(found.column("key").to_pylist(), found.column("skills").to_pylist()))


def write_cache(db: Any, name: str, rows: pa.Table) -> int:
    """Add fresh annotations to the cache table (insert-if-absent by key). Returns rows inserted."""
    if rows.num_rows == 0:
        return 0
    _, n = commit_rows(db, name, rows.cast(CACHE_SCHEMA), key="key")
    return n


def refresh_indexes(table: Any, plan: VectorIndexPlan, fts: bool, cache_table: Any | None = None) -> dict[str, Any]:
    """Create the missing indexes and fold new rows into the existing ones.

    - ``id``: a BTree, so ``merge_insert`` joins on an index instead of a scan.
    - ``skill_text``: the BM25 index (docs/method.md step 5).
    - ``vector``: the planned IVF index, created when the table first reaches the planned size; later
      runs add their rows with ``optimize()`` (new rows stay out of a vector index until then).

    Args:
        table: the LanceDB table.
        plan: the vector index plan for the table's current size.
        fts: build the full-text index.
        cache_table: the annotation cache table, given a key index too.

    Returns:
        What was built or refreshed, for the manifest.
    """
    from lancedb.index import FTS, BTree, HnswSq, IvfFlat, IvfSq

    existing = {ix.name for ix in table.list_indices()}
    done: dict[str, Any] = {"created": [], "optimized": False}
    if ID_INDEX not in existing:
        table.create_index("id", config=BTree(), name=ID_INDEX)
        done["created"].append(ID_INDEX)
    if fts and FTS_INDEX not in existing:
        table.create_index("skill_text", config=FTS(), name=FTS_INDEX)
        done["created"].append(FTS_INDEX)
    # An IVF index trained on a much smaller table has too few, too crowded partitions: retrain it
    # when the table has grown past 4x the rows it was trained on.
    stale = False
    if plan.index_type is not None and VECTOR_INDEX in existing:
        trained = table.index_stats(VECTOR_INDEX).num_indexed_rows
        stale = trained * 4 < table.count_rows()
    if plan.index_type is not None and (VECTOR_INDEX not in existing or stale):
        kind = {"IVF_SQ": IvfSq, "IVF_HNSW_SQ": HnswSq, "IVF_FLAT": IvfFlat}[plan.index_type]
        kwargs: dict[str, Any] = {"distance_type": plan.metric, "num_partitions": plan.num_partitions}
        if plan.index_type == "IVF_HNSW_SQ":
            kwargs.update(m=plan.m, ef_construction=plan.ef_construction)
        table.create_index("vector", config=kind(**kwargs), name=VECTOR_INDEX, replace=True)
        done["created"].append(VECTOR_INDEX)
    # optimize() compacts small commits and adds unindexed rows to every existing index.
    table.optimize()
    done["optimized"] = True
    if cache_table is not None:
        if KEY_INDEX not in {ix.name for ix in cache_table.list_indices()}:
            cache_table.create_index("key", config=BTree(), name=KEY_INDEX)
        cache_table.optimize()
    done["indexes"] = sorted(ix.name for ix in table.list_indices())
    return done
