"""Index-stage benchmarks (not a test): embedding throughput, 1 vs 2 nodes, ANN recall/latency, BM25 latency.

    python bench/index_bench.py --part all --out bench/index_bench.json

Parts:
- ``embed``: the Ray Data embedding operator (``edray.index.job.EmbedPredictor`` in an actor pool)
  against a bare sentence-transformers ``encode`` loop on the same cores, in the same run. Reports
  rows/s of both and their ratio, over the whole pipeline and over its steady state (from the first
  embedded batch to the last, i.e. without actor start-up and model load).
- ``nodes``: the same operator on a local cluster of one node vs two nodes (``ray.cluster_utils.Cluster``)
  with the same total CPUs.
- ``ann``: recall@10 of the LanceDB vector index against exact search, and p50/p99 query latency, at
  100K and 1M rows. Vectors are random clustered unit vectors (384-d), not MiniLM embeddings:
  embedding 1M texts would take over an hour on 2 cores.
- ``bm25``: full-text (BM25) query latency on skill texts at 100K rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def texts_for(n: int) -> list[str]:
    """World pool instructions + answers: realistic short texts for MiniLM."""
    from edray.index.core import instruction_and_answer
    from edray.world.pool import generate_support_rows

    t = generate_support_rows(0, 0, n)
    return [" ".join(instruction_and_answer(m)) for m in t.column("messages").to_pylist()]


def stream_table(texts: list[str]) -> pa.Table:
    n = len(texts)
    return pa.table({"status": ["ok"] * n, "skill_text": texts, "instruction": texts, "answer": [""] * n})


def bare_encode(texts: list[str], threads: int, batch_size: int) -> float:
    """rows/s of a plain sentence-transformers encode loop (model load excluded)."""
    import torch

    from edray.index.search import load_embedder

    torch.set_num_threads(threads)
    embed = load_embedder(None, device="cpu")
    embed(texts[:batch_size])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        embed(texts[i : i + batch_size])
    return len(texts) / (time.perf_counter() - t0)


def ray_embed(texts: list[str], actors: int, num_cpus: float, threads: int, batch_size: int) -> dict[str, float]:
    """rows/s of the pipeline's embedding operator (whole pipeline, and steady state)."""
    import ray

    from edray.index.config import EmbedConfig
    from edray.index.job import EmbedPredictor

    cfg = EmbedConfig(actors=actors, num_cpus=num_cpus, torch_threads=threads, batch_size=batch_size)
    # Materialized first: only the embedding operator is timed, and no read task competes for CPUs.
    ds = ray.data.from_arrow(stream_table(texts)).repartition(max(actors * 8, 8)).materialize()
    ds = ds.map_batches(EmbedPredictor, fn_constructor_kwargs={"cfg": cfg}, batch_format="pyarrow",
                        batch_size=batch_size, compute=ray.data.ActorPoolStrategy(min_size=actors, max_size=actors),
                        num_cpus=num_cpus)
    t0 = time.perf_counter()
    first = None
    rows = 0
    first_rows = 0
    for b in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        if first is None:
            first, first_rows = time.perf_counter(), b.num_rows
        rows += b.num_rows
    end = time.perf_counter()
    steady = (rows - first_rows) / (end - first) if first and end > first else 0.0
    return {"rows": rows, "pipeline_rows_per_s": rows / (end - t0), "steady_rows_per_s": steady}


def part_embed(n: int, batch_size: int) -> dict[str, Any]:
    import ray

    texts = texts_for(n)
    out: dict[str, Any] = {"rows": n, "cores": os.cpu_count()}
    out["bare_rows_per_s"] = bare_encode(texts, threads=2, batch_size=batch_size)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        # Logical CPUs below 1 per actor: on 2 cores, actors holding every CPU starve other tasks.
        for actors, threads, cpus in ((1, 2, 0.9), (2, 1, 0.45)):
            r = ray_embed(texts, actors, cpus, threads, batch_size)
            out[f"ray_{actors}x{threads}t"] = r
            r["ratio_pipeline"] = r["pipeline_rows_per_s"] / out["bare_rows_per_s"]
            r["ratio_steady"] = r["steady_rows_per_s"] / out["bare_rows_per_s"]
    finally:
        ray.shutdown()
    return out


def _cluster(nodes: list[int], attempts: int = 3) -> Any:
    """A local cluster with one node per entry (CPUs); retried because Ray gives a node 30 s to start."""
    from ray.cluster_utils import Cluster

    for attempt in range(attempts):
        cluster = None
        try:
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": nodes[0], "include_dashboard": False})
            for extra in nodes[1:]:
                cluster.add_node(num_cpus=extra)
            cluster.wait_for_nodes()
            return cluster
        except Exception:  # noqa: BLE001 - only start-up is retried
            if cluster is not None:
                cluster.shutdown()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def part_nodes(n: int, batch_size: int) -> dict[str, Any]:
    import ray

    texts = texts_for(n)
    out: dict[str, Any] = {"rows": n}
    for label, nodes in (("1_node", [2]), ("2_nodes", [1, 1])):
        cluster = _cluster(nodes)
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            out[label] = ray_embed(texts, actors=2, num_cpus=0.45, threads=1, batch_size=batch_size)
        finally:
            ray.shutdown()
            cluster.shutdown()
    return out


def clustered_vectors(n: int, d: int, seed: int, centers: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)).astype(np.float32)
    out = np.empty((n, d), np.float32)
    step = 100_000
    for i in range(0, n, step):
        m = min(step, n - i)
        out[i : i + m] = c[rng.integers(0, centers, m)] + 0.6 * rng.standard_normal((m, d)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def part_ann(sizes: list[int], queries: int, nprobes_list: list[int]) -> dict[str, Any]:
    from edray.index import core
    from edray.index.store import connect, refresh_indexes

    d = 384
    out: dict[str, Any] = {"dim": d, "queries": queries, "vectors": "random clustered unit vectors"}
    for n in sizes:
        tmp = Path(tempfile.mkdtemp(prefix="edray-ann-"))
        try:
            vec = clustered_vectors(n, d, seed=n)
            q = clustered_vectors(queries, d, seed=n + 1)
            truth = np.argsort(-(q @ vec.T), axis=1)[:, :10]
            db = connect(str(tmp))
            ids = pa.array(np.arange(n).astype(str))
            table = None
            for i in range(0, n, 200_000):
                chunk = pa.table({"id": ids[i : i + 200_000], "skill_text": pa.array(["x"] * min(200_000, n - i)),
                                  "vector": core.vectors_to_arrow(vec[i : i + 200_000])})
                table = db.create_table("t", data=chunk) if table is None else table
                if i:
                    table.add(chunk)
            plan = core.plan_vector_index(n, "auto", "cosine", 50_000)
            t0 = time.perf_counter()
            refresh_indexes(table, plan, fts=False)
            build = time.perf_counter() - t0
            res: dict[str, Any] = {"plan": plan.as_dict(), "build_s": round(build, 1)}
            for nprobes in nprobes_list:
                for refine in (0, 4):
                    lat, found = [], []
                    for qi in range(queries):
                        s = table.search(q[qi]).distance_type("cosine").nprobes(nprobes).limit(10).select(["id", "_distance"])
                        if refine:
                            s = s.refine_factor(refine)
                        t0 = time.perf_counter()
                        got = s.to_arrow()
                        lat.append((time.perf_counter() - t0) * 1000)
                        found.append([int(x) for x in got.column("id").to_pylist()])
                    res[f"nprobes={nprobes},refine={refine}"] = {
                        "recall@10": round(core.recall_at_k(found, truth.tolist(), 10), 4),
                        "p50_ms": round(float(np.percentile(lat, 50)), 2),
                        "p99_ms": round(float(np.percentile(lat, 99)), 2),
                    }
            lat = []
            for qi in range(min(queries, 30)):
                t0 = time.perf_counter()
                table.search(q[qi]).distance_type("cosine").bypass_vector_index().limit(10).select(["id", "_distance"]).to_arrow()
                lat.append((time.perf_counter() - t0) * 1000)
            res["exact_p50_ms"] = round(float(np.percentile(lat, 50)), 2)
            out[str(n)] = res
            print(json.dumps({n: res}), flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def part_bm25(n: int, queries: int) -> dict[str, Any]:
    from edray.index import core
    from edray.index.store import connect, refresh_indexes
    from edray.world.skills import SKILLS

    rng = np.random.default_rng(0)
    phrases = [p for s in SKILLS for p in s.phrases]
    texts = ["; ".join(rng.choice(phrases, size=rng.integers(1, 4), replace=False)) for _ in range(n)]
    tmp = Path(tempfile.mkdtemp(prefix="edray-bm25-"))
    try:
        db = connect(str(tmp))
        table = db.create_table("t", data=pa.table({"id": pa.array(np.arange(n).astype(str)), "skill_text": texts,
                                                     "vector": core.vectors_to_arrow(np.zeros((n, 4), np.float32))}))
        t0 = time.perf_counter()
        refresh_indexes(table, core.VectorIndexPlan(None, "cosine"), fts=True)
        build = time.perf_counter() - t0
        lat = []
        for i in range(queries):
            qtext = phrases[i % len(phrases)]
            t0 = time.perf_counter()
            table.search(qtext, query_type="fts").limit(10).select(["id", "_score"]).to_arrow()
            lat.append((time.perf_counter() - t0) * 1000)
        return {"rows": n, "build_s": round(build, 2), "p50_ms": round(float(np.percentile(lat, 50)), 2),
                "p99_ms": round(float(np.percentile(lat, 99)), 2)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["embed", "nodes", "ann", "bm25", "all"], default="all")
    ap.add_argument("--embed-rows", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--ann-sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--nprobes", type=int, nargs="+", default=[16, 32, 64, 100])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    results: dict[str, Any] = {}
    parts = ["embed", "nodes", "bm25", "ann"] if args.part == "all" else [args.part]
    for part in parts:
        t0 = time.perf_counter()
        if part == "embed":
            results[part] = part_embed(args.embed_rows, args.batch_size)
        elif part == "nodes":
            results[part] = part_nodes(args.embed_rows, args.batch_size)
        elif part == "ann":
            results[part] = part_ann(args.ann_sizes, args.queries, args.nprobes)
        else:
            results[part] = part_bm25(100_000, args.queries)
        results[part]["bench_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({part: results[part]}, indent=2), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
