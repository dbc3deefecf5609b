"""The index stage: supporting pool → skill annotation → embedding → LanceDB table with indexes.

Inputs: the supporting pool (``config.pool``: any format the readers accept) and the teacher (any
OpenAI-compatible endpoint, an engine in process such as the skills world's teacher, or vLLM on GPUs
through ``ray.data.llm``; :mod:`edray.index.annotate`).
Outputs: the LanceDB table ``<store.uri>/<store.table>`` (default ``<run-dir>/lancedb``) with a BM25
index on ``skill_text``, a vector index chosen from the table size and a BTree on ``id``; the
annotation cache table ``<store.table>_annotation_cache`` beside it; and the stage folder
``<run-dir>/index/`` with ``quarantine.parquet``, ``annotation_failures.parquet``, ``summary.json``,
``index_info.json`` and ``manifest.json``.

Run: ``edray index --config jobs/index.yaml --run-dir runs/x``

One streaming Ray Data pipeline, never materializing the pool:
read (tasks) → validate + anti-join on committed ids (tasks) → annotate (actor pool) → embed (actor
pool) → the driver, the single writer, committing every ``store.commit_rows`` rows with an
insert-if-absent merge on ``id``. A run killed at any point and re-run ends with every valid row
exactly once; a pool that grew costs only its new rows.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from edray.index import core
from edray.console import RowProgress, console
from edray.index.annotate import SkillAnnotator, annotate_with_vllm
from edray.index.config import EmbedConfig, IndexConfig
from edray.index.sizing import IndexSizes, size_index
from edray.resources import guard_stalls
from edray.rundir import Stage, StageDir, run_stage
from edray.schemas import (
    INDEX_ANNOTATION_FAILURES,
    INDEX_DB_DIR,
    INDEX_INFO,
    QUARANTINE,
    QUARANTINE_SCHEMA,
    SUMMARY,
)

_KNOWN_IDS: dict[str, frozenset[str]] = {}


def prepare_batch(batch: pa.Table, known_ref: Any, stage: str = core.STAGE_NAME) -> pa.Table:
    """Split a reader batch into valid and quarantined rows and mark ids already in the table.

    Args:
        batch: rows of :func:`edray.data.readers.read_samples`.
        known_ref: a Ray object reference to the committed ids (fetched once per worker process).
        stage: recorded on quarantined rows.

    Returns:
        A stream table (``core.STREAM_SCHEMA``).
    """
    import ray

    from edray.data.readers import split_batch

    key = known_ref.hex()
    if key not in _KNOWN_IDS:
        _KNOWN_IDS.clear()
        _KNOWN_IDS[key] = frozenset(ray.get(known_ref).to_pylist())
    valid, quarantine = split_batch(batch, "support", stage)
    ok_mask = pc.is_null(batch.column("_error_reason"))
    where = batch.filter(ok_mask).select(["_source", "_position"])
    valid = valid.append_column("_source", where.column("_source")).append_column("_position", where.column("_position"))
    return core.to_stream(valid, quarantine, _KNOWN_IDS[key])


class EmbedPredictor:
    """Embeds the new, annotated rows of a stream batch; loads its model once per actor."""

    def __init__(self, cfg: EmbedConfig) -> None:
        import torch

        from edray.index.search import load_embedder

        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        device = "cuda" if cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.cfg = cfg
        self.embed = load_embedder(cfg.model_path, device=device, trust_remote_code=cfg.trust_remote_code,
                                   normalize=cfg.normalize, max_seq_length=cfg.max_seq_length)
        self.dim = int(self.embed(["probe"]).shape[1])

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        n = batch.num_rows
        status = batch.column("status").to_pylist()
        rows = [i for i in range(n) if status[i] == core.STATUS_OK]
        vectors = np.zeros((n, self.dim), dtype=np.float32)
        if rows:
            sk = batch.column("skill_text").to_pylist()
            ins = batch.column("instruction").to_pylist()
            ans = batch.column("answer").to_pylist()
            texts = [core.text_to_embed(self.cfg.text, sk[i] or "", ins[i] or "", ans[i] or "") for i in rows]
            vectors[rows] = self.embed(texts)
        per_row = (time.perf_counter() - started) / max(len(rows), 1)
        return batch.append_column("vector", core.vectors_to_arrow(vectors)).append_column(
            "embed_s", pa.array([per_row if s == core.STATUS_OK else 0.0 for s in status], pa.float64())
        )


def build_pipeline(config: IndexConfig, db_uri: str, known_ref: Any, sizes: IndexSizes) -> Any:
    """The lazy Ray Data pipeline from the pool to embedded stream batches.

    Args:
        config: the stage config.
        db_uri: the LanceDB URI (the annotators open the cache table there).
        known_ref: object reference to the ids already committed.
        sizes: the actor pools' resolved sizes (:func:`edray.index.sizing.size_index`).

    Returns:
        A ``ray.data.Dataset`` of stream batches (``core.STREAM_SCHEMA`` + annotation + ``vector``).
    """
    import ray

    from edray.data.readers import read_samples

    read_cfg = config.read.model_copy(update={"kind": "support"})
    ds = read_samples(config.pool, kind="support", config=read_cfg)
    ds = ds.map_batches(prepare_batch, batch_format="pyarrow", batch_size=None, fn_kwargs={"known_ref": known_ref},
                        num_cpus=config.prepare_num_cpus)
    a = config.annotate
    # Ray Data restarts lost actors and retries their tasks by default (max_restarts=-1): a worker
    # node lost mid-run costs its in-flight batches only.
    if a.backend == "vllm":
        ds = annotate_with_vllm(ds, config, db_uri)
    else:
        ds = ds.map_batches(
            SkillAnnotator,
            fn_constructor_kwargs={"cfg": a, "db_uri": db_uri, "storage_options": config.store.storage_options,
                                   "cache_name": config.store.cache_table},
            batch_format="pyarrow",
            batch_size=a.batch_size,
            compute=ray.data.ActorPoolStrategy(min_size=a.actors, max_size=a.actors),
            num_cpus=a.num_cpus,
        )
    e = config.embed
    return ds.map_batches(
        EmbedPredictor,
        fn_constructor_kwargs={"cfg": e},
        batch_format="pyarrow",
        batch_size=e.batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=sizes.embed_actors, max_size=sizes.embed_actors),
        num_cpus=sizes.embed_cpus,
        num_gpus=e.num_gpus or None,
    )


class _Writer:
    """The single writer of the table and the cache table, committing every ``commit_rows`` rows."""

    def __init__(self, config: IndexConfig, db: Any) -> None:
        self.config = config
        self.db = db
        self.table_name = config.store.table
        self.cache_name = config.store.cache_table
        self.pending: list[pa.Table] = []
        self.pending_cache: list[pa.Table] = []
        self.pending_rows = 0
        self.seen: set[str] = set()
        self.quarantine: list[pa.Table] = []
        self.failures: list[pa.Table] = []
        self.counts = {k: 0 for k in ("rows_in", "valid", "already_indexed", "quarantined", "duplicates",
                                      "annotate_rows", "annotated", "teacher_requests", "cache_hits", "annotation_failures",
                                      "embedded", "indexed", "commits")}
        self.busy = {"annotate": 0.0, "embed": 0.0, "write": 0.0}

    def add(self, batch: pa.Table) -> None:
        c = self.counts
        c["rows_in"] += batch.num_rows
        batch = self._mark_duplicates(batch)
        status = batch.column("status")
        n_ok = pc.sum(pc.equal(status, core.STATUS_OK)).as_py() or 0
        n_known = pc.sum(pc.equal(status, core.STATUS_KNOWN)).as_py() or 0
        n_failed = pc.sum(pc.equal(status, core.STATUS_ANNOTATION_FAILED)).as_py() or 0
        hits = pc.sum(pc.fill_null(batch.column("cache_hit"), False)).as_py() or 0
        c["valid"] += n_ok + n_known + n_failed
        c["already_indexed"] += n_known
        c["annotate_rows"] += n_ok + n_failed
        c["cache_hits"] += hits
        c["teacher_requests"] += pc.sum(pc.fill_null(batch.column("teacher_request"), False)).as_py() or 0
        c["annotated"] += n_ok - hits
        c["annotation_failures"] += n_failed
        c["embedded"] += n_ok
        self.busy["annotate"] += pc.sum(batch.column("annotate_s")).as_py() or 0.0
        self.busy["embed"] += pc.sum(batch.column("embed_s")).as_py() or 0.0
        q = core.quarantine_rows(batch)
        if q.num_rows:
            self.quarantine.append(q)
            c["quarantined"] += q.num_rows
        f = core.annotation_failure_rows(batch)
        if f.num_rows:
            self.failures.append(f)
        rows = core.table_rows(batch, self.config.store.payload)
        if rows.num_rows:
            self.pending.append(rows)
            self.pending_rows += rows.num_rows
            if self.config.annotate.use_cache:
                self.pending_cache.append(core.cache_rows(batch, self.config.annotate.model, self.config.annotate.prompt_version))
        if self.pending_rows >= self.config.store.commit_rows:
            self.flush()

    def _mark_duplicates(self, batch: pa.Table) -> pa.Table:
        # Ids repeated across blocks: only the driver sees every block, so the first occurrence wins here.
        status = batch.column("status").to_pylist()
        ids = batch.column("id").to_pylist()
        reasons = batch.column("reason").to_pylist()
        fields = batch.column("reason_field").to_pylist()
        changed = False
        for i, (s, rid) in enumerate(zip(status, ids)):
            if s == core.STATUS_QUARANTINE:
                continue
            if rid in self.seen:
                status[i], reasons[i], fields[i], changed = core.STATUS_QUARANTINE, f"duplicate id {rid!r} within the pool", "id", True
                self.counts["duplicates"] += 1
            else:
                self.seen.add(rid)
        if not changed:
            return batch
        for name, values in (("status", status), ("reason", reasons), ("reason_field", fields)):
            batch = batch.set_column(batch.schema.get_field_index(name), name, pa.array(values, pa.string()))
        return batch

    def flush(self) -> None:
        from edray.index.store import commit_rows, write_cache

        if not self.pending:
            return
        started = time.perf_counter()
        rows = pa.concat_tables(self.pending)
        # Cache first: a crash after it costs nothing, a crash before the table commit re-annotates nothing.
        if self.pending_cache:
            write_cache(self.db, self.cache_name, pa.concat_tables(self.pending_cache))
        _, inserted = commit_rows(self.db, self.table_name, rows)
        self.counts["indexed"] += inserted
        self.counts["commits"] += 1
        self.pending, self.pending_cache, self.pending_rows = [], [], 0
        self.busy["write"] += time.perf_counter() - started


def stage(config: IndexConfig, run_dir: str | os.PathLike[str]) -> Stage:
    """The index stage's identity: ``<run_dir>/index``, keyed by the config and the pool."""
    return Stage(StageDir(Path(run_dir), core.STAGE_NAME), config, inputs=[config.pool])


def run(config: IndexConfig, run_dir: str | os.PathLike[str], force: bool = False) -> Path:
    """Index the pool into LanceDB; skip when the same config and pool were already indexed.

    Args:
        config: the stage config.
        run_dir: the run directory (the stage folder is ``<run_dir>/index``).
        force: re-run even when a completed stage has the same fingerprint.

    Returns:
        The stage folder.

    Raises:
        FileNotFoundError: the pool does not exist.
        ConfigError: the configuration cannot run on this cluster (vLLM without GPUs).
        edray.resources.ResourceError: the actor pools cannot fit on this cluster (before any work).
        edray.resources.StallError: the pipeline delivered nothing for ``stall_timeout_s``.
    """
    if not Path(config.pool).exists() and "://" not in config.pool:
        raise FileNotFoundError(f"pool {config.pool} does not exist")
    st = stage(config, run_dir)
    summary: dict[str, Any] = {}

    def compute(tmp: Path) -> None:
        assert st.shape is not None
        summary.update(index_pool(config, Path(run_dir), st.dir, tmp, size_index(config, st.shape)))

    run_stage(st, compute, force=force, plan=lambda shape: size_index(config, shape).plan)
    if summary:
        _print_summary(summary)
    return st.path


def index_pool(config: IndexConfig, run_dir: Path, stage_dir: StageDir, tmp: Path, sizes: IndexSizes) -> dict[str, Any]:
    """Run the pipeline, commit the table and its indexes, and write the stage's files into ``tmp``.

    Returns:
        The summary written to ``summary.json`` and ``manifest.json``.
    """
    import ray

    from edray.index.store import committed_ids, connect, open_table, refresh_indexes

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = ctx.enable_operator_progress_bars = config.progress_bars
    db_uri = config.store.uri or str((run_dir / INDEX_DB_DIR).resolve())
    db = connect(db_uri, config.store.storage_options)
    started = time.perf_counter()
    known = committed_ids(open_table(db, config.store.table))
    known_ref = ray.put(known)
    writer = _Writer(config, db)
    ds = build_pipeline(config, db_uri, known_ref, sizes)
    batches = guard_stalls(ds.iter_batches(batch_format="pyarrow", batch_size=None), config.stall_timeout_s,
                           sizes.plan, what="batch")
    with RowProgress("index: annotate + embed") as progress:
        for batch in batches:
            writer.add(batch)
            progress.advance(batch.num_rows)
    writer.flush()
    _check_budget(config, writer)
    table = open_table(db, config.store.table)
    if table is None:
        reasons = pa.concat_tables(writer.quarantine).column("reason").to_pylist() if writer.quarantine else []
        example = f"; first reason: {reasons[0]}" if reasons else ""
        raise ValueError(f"no valid row to index in {config.pool}: {len(reasons)} row(s) quarantined{example}")
    total = table.count_rows()
    s = config.store
    plan = core.plan_vector_index(total, s.vector_index, s.metric, s.exact_below_rows, s.num_partitions,
                                  s.hnsw_m, s.hnsw_ef_construction)
    t0 = time.perf_counter()
    built = refresh_indexes(table, plan, s.fts, open_table(db, config.store.cache_table))
    index_s = time.perf_counter() - t0
    wall = time.perf_counter() - started
    counts = dict(writer.counts, table_rows=total)
    summary = core.summarize(counts, writer.busy, {"annotate": sizes.annotate_actors, "embed": sizes.embed_actors,
                                                  "write": 1}, wall)
    summary.update(vector_index=plan.as_dict(), indexes=built, index_build_s=round(index_s, 3), uri=db_uri,
                   table=config.store.table, resources=sizes.plan.describe())
    info = {"uri": db_uri, "table": config.store.table,
            "embed_model": config.embed.model_path, "embed_text": config.embed.text, "normalize": config.embed.normalize,
            "max_seq_length": config.embed.max_seq_length, "metric": s.metric, "rrf_k": config.search.rrf_k,
            "nprobes": config.search.nprobes or core.auto_nprobes(plan.num_partitions), "payload": s.payload, "version": table.version}
    stage_dir.counts.update({k: int(v) for k, v in counts.items()})
    stage_dir.metrics.update({"stages": summary["stages"], "rows_per_s": summary["rows_per_s"],
                              "index_build_s": summary["index_build_s"], "vector_index": summary["vector_index"],
                              "resources": summary["resources"]})
    q = pa.concat_tables(writer.quarantine) if writer.quarantine else QUARANTINE_SCHEMA.empty_table()
    pq.write_table(q, tmp / QUARANTINE)
    f = pa.concat_tables(writer.failures) if writer.failures else core.ANNOTATION_FAILURE_SCHEMA.empty_table()
    pq.write_table(f, tmp / INDEX_ANNOTATION_FAILURES)
    (tmp / SUMMARY).write_text(json.dumps(summary, indent=2, default=str))
    (tmp / INDEX_INFO).write_text(json.dumps(info, indent=2))
    return summary


def _check_budget(config: IndexConfig, writer: "_Writer") -> None:
    """Stop when too many rows sent to the teacher failed or came back unusable.

    The rows that were annotated are committed (and cached) before this check, so a re-run annotates
    only the rest.

    Raises:
        FailureBudgetExceeded: over ``annotate.max_failure_share``.
    """
    from edray.budget import check_failure_budget

    failed = pa.concat_tables(writer.failures).to_pylist() if writer.failures else []
    check_failure_budget(
        core.STAGE_NAME, "pool rows sent to the teacher", writer.counts["annotate_rows"],
        [(str(r["id"]), str(r["reason"])) for r in failed], config.annotate.max_failure_share,
        "check annotate.base_url / annotate.model (or annotate.engine) and the API key; for unusable replies set "
        "annotate.structured=json_schema on an endpoint that enforces JSON schemas, or rewrite annotate.question; "
        "raise annotate.max_failure_share to accept more failures (1 never stops).",
    )


def _print_summary(summary: dict[str, Any]) -> None:
    """One line: rows in and out, failures, and the rate of each pipeline stage."""
    c = summary["counts"]
    rates = ", ".join(f"{name} {st['rows_per_s']:,.0f}/s" for name, st in summary["stages"].items())
    console.print(
        f"index: {c.get('rows_in', 0):,} rows in, {c.get('indexed', 0):,} indexed, {c.get('already_indexed', 0):,} "
        f"already indexed, {c.get('quarantined', 0):,} quarantined, {c.get('annotation_failures', 0):,} annotation "
        f"failures, {c.get('cache_hits', 0):,} cache hits; {summary['rows_per_s']:,.0f} rows/s ({rates}); "
        f"table {c.get('table_rows', 0):,} rows"
    )
