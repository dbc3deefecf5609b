"""Fault tolerance on a local 2-node Ray cluster: a worker node dies mid-run, the run is re-run, and the
table ends with every valid row exactly once.

The cluster (``ray.cluster_utils.Cluster``: a head and a worker node) lives in a subprocess so it never
meets the session's ``ray_session``. Inside it, a first ``edray index`` driver (itself a subprocess)
indexes the world pool; once a first batch is committed the worker node is removed, the first driver
gets a grace period to finish or is killed, and a second run indexes the pool again.

Run by hand: ``python tests/integration/test_index_cluster.py scenario --pool DIR --work DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
COMMIT_ROWS = 100


def _config(pool: str) -> "IndexConfig":  # noqa: F821
    from edray.index.config import IndexConfig

    return IndexConfig.model_validate(
        {
            "pool": pool,
            "progress_bars": False,
            "read": {"batch_rows": 50},
            # A slightly slow teacher (20 ms a request, one at a time) spreads the run over several
            # commits, so the node can be killed between them.
            "annotate": {"actors": 1, "num_cpus": 0.25, "batch_size": 25, "concurrency": 1,
                         "backend": "engine", "engine": "edray.world.teacher:WorldTeacher",
                         "engine_options": {"noise": {"slow": 1.0, "slow_seconds": 0.02}}},
            "embed": {"actors": 2, "num_cpus": 0.5, "batch_size": 25},
            "store": {"commit_rows": COMMIT_ROWS},
        }
    )


def _index(address: str, pool: str, run_dir: str, force: bool) -> dict:
    import ray

    from edray.index import job

    ray.init(address=address, log_to_driver=False, configure_logging=False)
    path = job.run(_config(pool), run_dir, force=force)
    return json.loads((path / "manifest.json").read_text())["counts"]


def _table_ids(db_uri: str) -> list[str]:
    from edray.index.store import committed_ids, connect, open_table

    return committed_ids(open_table(connect(db_uri), "support")).to_pylist()


def _start_cluster(attempts: int = 3) -> tuple["Cluster", object]:  # noqa: F821
    """A head (3 CPUs: enough for the whole pipeline once the worker is gone) and a 2-CPU worker node.

    Ray gives a node 30 s to register; on a loaded machine that can fail, so start-up is retried.
    """
    from ray.cluster_utils import Cluster

    for attempt in range(attempts):
        cluster = None
        try:
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "include_dashboard": False})
            worker = cluster.add_node(num_cpus=2)
            cluster.wait_for_nodes()
            return cluster, worker
        except Exception:  # noqa: BLE001 - only start-up is retried
            if cluster is not None:
                cluster.shutdown()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def scenario(pool: str, work: Path) -> dict:
    """Start the cluster, run, kill the worker node mid-run, re-run; return what the test checks."""
    import pyarrow.parquet as pq
    import ray

    from edray.schemas import QUARANTINE

    cluster, worker = _start_cluster()
    run_dir = work / "run"
    db_uri = str((run_dir / "lancedb").resolve())
    out: dict = {}
    try:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        first = subprocess.Popen(
            [sys.executable, str(HERE), "index", "--address", cluster.address, "--pool", pool, "--run-dir", str(run_dir)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.time() + 240
        rows_at_kill = 0
        while time.time() < deadline and first.poll() is None:
            try:
                rows_at_kill = len(_table_ids(db_uri))
            except Exception:  # noqa: BLE001 - the table may not exist yet
                rows_at_kill = 0
            if rows_at_kill > 0:
                break
            time.sleep(0.2)
        out["first_finished_before_kill"] = first.poll() is not None
        cluster.remove_node(worker, allow_graceful=False)
        out["rows_at_kill"] = rows_at_kill
        try:
            first.wait(timeout=60)
            out["first_outcome"] = "finished" if first.returncode == 0 else f"failed rc={first.returncode}"
        except subprocess.TimeoutExpired:
            first.kill()
            first.wait()
            out["first_outcome"] = "killed"
        out["first_log_tail"] = (first.stdout.read() if first.stdout else "")[-2000:]
        out["rows_after_first"] = len(_table_ids(db_uri)) if (run_dir / "lancedb").exists() else 0
        out["second_counts"] = _index(cluster.address, pool, str(run_dir), force=True)
        ids = _table_ids(db_uri)
        out["rows"] = len(ids)
        out["unique_ids"] = len(set(ids))
        out["quarantined"] = pq.read_table(run_dir / "index" / QUARANTINE).num_rows
    finally:
        ray.shutdown()
        cluster.shutdown()
    return out


def test_worker_node_lost_mid_run_then_rerun_indexes_each_row_once(index_world_pool, tmp_path) -> None:
    result_path = tmp_path / "result.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(HERE), "scenario", "--pool", str(index_world_pool.folder), "--work", str(tmp_path),
         "--result", str(result_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(result_path.read_text())
    print(json.dumps({k: v for k, v in r.items() if k != "first_log_tail"}))
    # The kill happened mid-run: some but not all rows were committed by then.
    assert not r["first_finished_before_kill"], r
    assert 0 < r["rows_at_kill"] < index_world_pool.valid_rows, r
    assert r["rows"] == index_world_pool.valid_rows, r
    assert r["unique_ids"] == r["rows"], r
    assert r["quarantined"] == index_world_pool.planted_bad, r
    counts = r["second_counts"]
    # The re-run skips what the first run committed and adds exactly the rest.
    assert counts["already_indexed"] == r["rows_after_first"], r
    assert counts["indexed"] == index_world_pool.valid_rows - r["rows_after_first"], r


def _main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["scenario", "index"])
    ap.add_argument("--pool", required=True)
    ap.add_argument("--work", type=Path)
    ap.add_argument("--result", type=Path)
    ap.add_argument("--address")
    ap.add_argument("--run-dir")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.what == "index":
        print(json.dumps(_index(args.address, args.pool, args.run_dir, force=False)))
        return
    result = scenario(args.pool, args.work)
    print(json.dumps(result, indent=2))
    if args.result:
        args.result.write_text(json.dumps(result))


if __name__ == "__main__":
    _main()
