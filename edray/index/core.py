"""Pure functions of the index stage: the row stream, annotation keys and parsing, embedding text,
vector-index planning, reciprocal-rank fusion and the run summary. No Ray, no I/O, deterministic.

The pipeline carries one *stream* table per batch (``STREAM_SCHEMA``): valid pool rows, rows already in
the table (``status="known"``, payload dropped) and quarantined rows (``status="quarantine"``) travel
together so that the pool is read once and the single writer on the driver sees every outcome.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from edray.schemas import (
    IMAGE_PLACEHOLDER,
    INDEX_ANNOTATION_CACHE_SCHEMA,
    INDEX_ANNOTATION_FAILURE_SCHEMA,
    MESSAGE_TYPE,
    QUARANTINE_SCHEMA,
)

STATUS_OK = "ok"
STATUS_KNOWN = "known"
STATUS_QUARANTINE = "quarantine"
STATUS_ANNOTATION_FAILED = "annotation_failed"

STAGE_NAME = "index"

# Columns of the batches that flow between the pipeline's operators.
STREAM_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("source_task", pa.string()),
        pa.field("images", pa.list_(pa.binary())),
        pa.field("messages", pa.list_(MESSAGE_TYPE)),
        pa.field("metadata", pa.string()),
        pa.field("source", pa.string()),
        pa.field("position", pa.int64()),
        pa.field("instruction", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("status", pa.string()),
        pa.field("reason_field", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("raw", pa.string()),
    ]
)
ANNOTATED_FIELDS = [
    pa.field("skills", pa.list_(pa.string())),
    pa.field("skill_text", pa.string()),
    pa.field("annotation_key", pa.string()),
    pa.field("cache_hit", pa.bool_()),
    pa.field("teacher_request", pa.bool_()),
    pa.field("annotate_s", pa.float64()),
]

ANNOTATION_FAILURE_SCHEMA = INDEX_ANNOTATION_FAILURE_SCHEMA
CACHE_SCHEMA = INDEX_ANNOTATION_CACHE_SCHEMA


def instruction_and_answer(messages: Sequence[dict[str, Any]] | None) -> tuple[str, str]:
    """Split a chat into the instruction (every user turn) and the answer (the last assistant turn).

    Image placeholders are removed: the teacher is text-only (docs/method.md section 1, step 2) and the
    skill is written from the instruction and the answer (step 4).

    Args:
        messages: chat turns ``{"role", "content"}``.

    Returns:
        ``(instruction, answer)``; either may be empty.
    """
    users: list[str] = []
    answer = ""
    for turn in messages or []:
        content = (turn.get("content") or "").replace(IMAGE_PLACEHOLDER, " ")
        content = re.sub(r"\s+", " ", content).strip()
        if turn.get("role") == "user":
            users.append(content)
        elif turn.get("role") == "assistant":
            answer = content
    return "\n".join(u for u in users if u), answer


def annotation_key(instruction: str, answer: str, model: str, prompt_version: str) -> str:
    """Content hash that keys the annotation cache: same sample text, teacher and prompt → same key.

    Args:
        instruction: the sample's instruction text.
        answer: the sample's answer text.
        model: the teacher model name.
        prompt_version: the annotation prompt version.

    Returns:
        A 32-character hex digest.
    """
    payload = json.dumps([instruction, answer, model, prompt_version], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def parse_skills(text: str, max_skills: int, max_words: int = 8) -> list[str]:
    """Parse the teacher's annotation reply into at most ``max_skills`` distinct short skill phrases.

    The reply format is the one :mod:`edray.index.prompts` asks for (``phrase; phrase`` or
    ``{"skills": [...]}``); a JSON list, bullets, numbering and sentences that name a skill are
    accepted too (:func:`edray.index.prompts.short_phrase`).

    Args:
        text: the teacher's answer.
        max_skills: the most skills kept.
        max_words: the most words per phrase.

    Returns:
        The skills, lower-cased and stripped, in the teacher's order.

    Raises:
        ValueError: no skill could be read from the answer.
    """
    from edray.index.prompts import parse_annotation

    return parse_annotation(text, max_skills, max_words)


def skill_text(skills: Sequence[str]) -> str:
    """The searchable text of a sample's skills (what BM25 ranks, docs/method.md step 5)."""
    return "; ".join(skills)


def text_to_embed(mode: str, skill: str, instruction: str, answer: str) -> str:
    """The text the embedder sees for one row.

    Args:
        mode: ``skill``, ``instruction`` or ``instruction_answer``.
        skill: the annotated skill text.
        instruction: the instruction text.
        answer: the answer text.

    Raises:
        ValueError: unknown mode.
    """
    if mode == "skill":
        return skill
    if mode == "instruction":
        return instruction
    if mode == "instruction_answer":
        return f"{instruction}\n{answer}".strip()
    raise ValueError(f"unknown embed text mode {mode!r}")


def to_stream(valid: pa.Table, quarantine: pa.Table, known_ids: set[str] | frozenset[str]) -> pa.Table:
    """Merge a reader batch's valid and quarantined rows into one stream table.

    Valid rows whose id is already in the table become ``status="known"`` with their payload dropped
    (they are counted, never annotated or embedded again: incremental indexing). A valid row whose
    id repeats inside the batch is quarantined as a duplicate, so each id is annotated once.

    Args:
        valid: rows in ``SUPPORT_SCHEMA`` plus ``_source`` and ``_position``.
        quarantine: rows in ``QUARANTINE_SCHEMA``.
        known_ids: ids already committed to the table.

    Returns:
        A table in ``STREAM_SCHEMA``.
    """
    n = valid.num_rows
    ids = valid.column("id").to_pylist() if n else []
    messages = valid.column("messages").to_pylist() if n else []
    seen: set[str] = set()
    status, r_field, reason = [], [], []
    instructions, answers = [], []
    for rid, msgs in zip(ids, messages):
        if rid in seen:
            status.append(STATUS_QUARANTINE)
            r_field.append("id")
            reason.append(f"duplicate id {rid!r} within the pool")
        elif rid in known_ids:
            status.append(STATUS_KNOWN)
            r_field.append(None)
            reason.append(None)
        else:
            status.append(STATUS_OK)
            r_field.append(None)
            reason.append(None)
        seen.add(rid)
        ins, ans = instruction_and_answer(msgs)
        instructions.append(ins)
        answers.append(ans)
    keep_payload = pa.array([s == STATUS_OK for s in status], pa.bool_())

    def col(name: str, typ: pa.DataType) -> pa.Array:
        if name in valid.column_names:
            return valid.column(name).combine_chunks().cast(typ)
        return pa.nulls(n, typ)

    images = pc.if_else(keep_payload, col("images", pa.list_(pa.binary())), pa.scalar([], pa.list_(pa.binary())))
    msgs_arr = pc.if_else(keep_payload, col("messages", pa.list_(MESSAGE_TYPE)), pa.nulls(n, pa.list_(MESSAGE_TYPE)))
    good = pa.table(
        {
            "id": col("id", pa.string()),
            "source_task": col("source_task", pa.string()),
            "images": images,
            "messages": msgs_arr,
            "metadata": col("metadata", pa.string()),
            "source": col("_source", pa.string()),
            "position": col("_position", pa.int64()),
            "instruction": pa.array(instructions, pa.string()),
            "answer": pa.array(answers, pa.string()),
            "status": pa.array(status, pa.string()),
            "reason_field": pa.array(r_field, pa.string()),
            "reason": pa.array(reason, pa.string()),
            "raw": pa.nulls(n, pa.string()),
        },
        schema=STREAM_SCHEMA,
    )
    q = quarantine.num_rows
    if q == 0:
        return good
    bad = pa.table(
        {
            "id": quarantine.column("record_id").cast(pa.string()),
            "source_task": pa.nulls(q, pa.string()),
            "images": pa.array([[]] * q, pa.list_(pa.binary())),
            "messages": pa.nulls(q, pa.list_(MESSAGE_TYPE)),
            "metadata": pa.nulls(q, pa.string()),
            "source": quarantine.column("source").cast(pa.string()),
            "position": quarantine.column("position").cast(pa.int64()),
            "instruction": pa.nulls(q, pa.string()),
            "answer": pa.nulls(q, pa.string()),
            "status": pa.array([STATUS_QUARANTINE] * q, pa.string()),
            "reason_field": quarantine.column("field").cast(pa.string()),
            "reason": quarantine.column("reason").cast(pa.string()),
            "raw": quarantine.column("raw").cast(pa.string()),
        },
        schema=STREAM_SCHEMA,
    )
    return pa.concat_tables([good, bad])


def quarantine_rows(stream: pa.Table) -> pa.Table:
    """The quarantined rows of a stream table, in ``QUARANTINE_SCHEMA``."""
    q = stream.filter(pc.equal(stream.column("status"), STATUS_QUARANTINE))
    return pa.table(
        {
            "record_id": q.column("id"),
            "source": pc.fill_null(q.column("source"), ""),
            "position": q.column("position"),
            "field": q.column("reason_field"),
            "reason": pc.fill_null(q.column("reason"), "invalid record"),
            "stage": pa.array([STAGE_NAME] * q.num_rows, pa.string()),
            "raw": q.column("raw"),
        },
        schema=QUARANTINE_SCHEMA,
    )


def annotation_failure_rows(stream: pa.Table) -> pa.Table:
    """The rows whose annotation finally failed, in ``ANNOTATION_FAILURE_SCHEMA``."""
    f = stream.filter(pc.equal(stream.column("status"), STATUS_ANNOTATION_FAILED))
    return pa.table(
        {
            "id": f.column("id"),
            "source": f.column("source"),
            "position": f.column("position"),
            "annotation_key": f.column("annotation_key"),
            "reason": pc.fill_null(f.column("reason"), "annotation failed"),
        },
        schema=ANNOTATION_FAILURE_SCHEMA,
    )


def table_rows(stream: pa.Table, payload: str) -> pa.Table:
    """The rows of a stream table that go into the LanceDB table, with the columns the table keeps.

    Args:
        stream: an embedded stream table (has ``vector``).
        payload: ``inline`` keeps images, messages and metadata; ``reference`` keeps only the source
            path and position to read them back.
    """
    ok = stream.filter(pc.equal(stream.column("status"), STATUS_OK))
    cols = ["id", "source_task", "skills", "skill_text", "instruction", "answer", "source", "position", "vector"]
    if payload == "inline":
        cols += ["images", "messages", "metadata"]
    return ok.select(cols)


def cache_rows(stream: pa.Table, model: str, prompt_version: str) -> pa.Table:
    """Fresh annotations of a stream table (not cache hits), in ``CACHE_SCHEMA``, one per key."""
    fresh = stream.filter(
        pc.and_(pc.equal(stream.column("status"), STATUS_OK), pc.invert(pc.fill_null(stream.column("cache_hit"), False)))
    )
    keys = fresh.column("annotation_key").to_pylist()
    skills = fresh.column("skills").to_pylist()
    seen: dict[str, list[str]] = {}
    for k, s in zip(keys, skills):
        seen.setdefault(k, s)
    n = len(seen)
    return pa.table(
        {
            "key": pa.array(list(seen), pa.string()),
            "skills": pa.array(list(seen.values()), pa.list_(pa.string())),
            "model": pa.array([model] * n, pa.string()),
            "prompt_version": pa.array([prompt_version] * n, pa.string()),
        },
        schema=CACHE_SCHEMA,
    )


@dataclass(frozen=True)
class VectorIndexPlan:
    """A vector index to build, or exact search (``index_type is None``)."""

    index_type: str | None
    metric: str
    num_partitions: int = 0
    m: int = 0
    ef_construction: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "index_type": self.index_type or "exact",
            "metric": self.metric,
            "num_partitions": self.num_partitions,
            "m": self.m,
            "ef_construction": self.ef_construction,
        }


def plan_vector_index(
    num_rows: int,
    requested: str,
    metric: str,
    exact_below_rows: int,
    num_partitions: int = 0,
    hnsw_m: int = 20,
    hnsw_ef_construction: int = 150,
) -> VectorIndexPlan:
    """Choose the vector index from the table size.

    Below ``exact_below_rows`` exact search is both exact and fast enough (about 59 ms per query at
    100K x 384 on 2 cores, less below), so no index is built. Above it ``auto`` picks IVF_SQ: on CPU it
    builds in seconds with recall@10 0.91-0.97 at ~3.5 ms, where IVF_PQ needed 87 s for recall 0.44.

    Args:
        num_rows: rows in the table.
        requested: ``auto``, ``none`` or an index type.
        metric: ``cosine``, ``l2`` or ``dot``.
        exact_below_rows: size under which search stays exact.
        num_partitions: IVF partitions; 0 chooses sqrt(num_rows).
        hnsw_m: HNSW degree.
        hnsw_ef_construction: HNSW build beam.

    Returns:
        The plan.
    """
    if requested == "none" or num_rows < max(exact_below_rows, 1) or num_rows < 256:
        return VectorIndexPlan(None, metric)
    index_type = "IVF_SQ" if requested == "auto" else requested
    partitions = num_partitions or max(1, round(math.sqrt(num_rows)))
    if index_type.startswith("IVF_HNSW"):
        return VectorIndexPlan(index_type, metric, partitions, hnsw_m, hnsw_ef_construction)
    return VectorIndexPlan(index_type, metric, partitions)


def auto_nprobes(num_partitions: int, fraction: float = 0.1, floor: int = 16) -> int:
    """Partitions to probe per dense query when the config leaves it to the index.

    Args:
        num_partitions: partitions of the IVF index (0: no index, exact search).
        fraction: share of the partitions probed.
        floor: fewest partitions probed.
    """
    if num_partitions <= 0:
        return 1
    return min(num_partitions, max(floor, math.ceil(num_partitions * fraction)))


def rrf_fuse(rankings: Sequence[Sequence[str]], k: int) -> list[tuple[str, float]]:
    """Reciprocal-rank fusion: score(id) = sum over rankings of 1 / (k + rank), rank from 1.

    Args:
        rankings: ids in rank order, one list per retriever.
        k: the fusion constant (60 in the RRF paper).

    Returns:
        ``(id, score)`` by decreasing score; ties broken by id so the order is deterministic.
    """
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, rid in enumerate(ranking, start=1):
            scores[rid] = scores.get(rid, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def vectors_to_arrow(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """A float32 ``(n, d)`` matrix as an Arrow fixed-size-list column (LanceDB's vector type)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), d)


def recall_at_k(found: Iterable[Sequence[Any]], truth: Iterable[Sequence[Any]], k: int) -> float:
    """Mean over queries of |found[:k] ∩ truth[:k]| / k."""
    vals = [len(set(list(f)[:k]) & set(list(t)[:k])) / k for f, t in zip(found, truth)]
    return float(np.mean(vals)) if vals else 0.0


def summarize(counts: dict[str, int], busy_s: dict[str, float], actors: dict[str, int], wall_s: float) -> dict[str, Any]:
    """The run summary: counts plus rows/s per stage.

    Per stage, ``rows_per_s`` is rows processed / wall time of the whole run (what the pipeline
    delivered) and ``rows_per_actor_s`` is rows / the stage's summed busy seconds (what one actor
    sustains); a stage whose pool is the bottleneck shows ``rows_per_s ≈ actors × rows_per_actor_s``.

    Args:
        counts: integer counters (``rows_in``, ``indexed``, ``annotated``, ``embedded``...).
        busy_s: summed busy seconds per stage.
        actors: actors per stage.
        wall_s: the run's wall time.
    """
    stages: dict[str, Any] = {}
    stage_rows = {"annotate": counts.get("annotate_rows", 0), "embed": counts.get("embedded", 0), "write": counts.get("indexed", 0)}
    for stage, rows in stage_rows.items():
        busy = busy_s.get(stage, 0.0)
        stages[stage] = {
            "rows": rows,
            "busy_s": round(busy, 3),
            "actors": actors.get(stage, 1),
            "rows_per_s": round(rows / wall_s, 2) if wall_s > 0 else 0.0,
            "rows_per_actor_s": round(rows / busy, 2) if busy > 0 else 0.0,
        }
    return {"counts": dict(counts), "stages": stages, "wall_s": round(wall_s, 3),
            "rows_per_s": round(counts.get("rows_in", 0) / wall_s, 2) if wall_s > 0 else 0.0}
