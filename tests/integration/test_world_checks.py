"""`edray world check` as a process on a run folder, and the train stage fed the oracle's selection."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from edray.schemas import ERRORS, TRAIN_METRICS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _edray(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "400", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "edray", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_world_check_prints_writes_and_exits_by_verdict(check_run, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(check_run.run_dir, run)
    done = _edray("world", "check", "--run-dir", str(run), "--arm-oracle", "oracle", "--arm-random", "random")
    saved = json.loads((run / "checks" / "checks.json").read_text())
    statuses = {d["check"]: d["status"] for d in saved}
    for d in saved:
        assert f"({d['check']}) {d['name']}" in done.stdout and d["status"].upper() in done.stdout
    frame = pd.read_parquet(run / "checks" / "checks.parquet")
    assert dict(zip(frame["check"], frame["status"])) == statuses
    # The planted run fails (b) only (today's world reasons in about one step): exit code 1.
    assert statuses == {"a": "pass", "b": "fail", "c": "pass", "d": "pass", "e": "pass"}
    assert done.returncode == 1, done.stderr

    # With (b) measured on the gap errors alone and (e) left out, the verdict follows the statuses.
    passing = _edray("world", "check", "--run-dir", str(run), "--gap-skill", "attribute_binding", "--gap-skill", "vertical_position")
    assert "(e) headroom" in passing.stdout and "NOT_MEASURED" in passing.stdout and passing.returncode == 1


def test_world_check_names_the_missing_file(check_run, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(check_run.run_dir, run)
    (run / "round_0" / "diagnose" / ERRORS).unlink()
    done = _edray("world", "check", "--run-dir", str(run))
    assert done.returncode == 2
    assert str(run / "round_0" / "diagnose" / ERRORS) in done.stdout + done.stderr
    assert not (run / "checks").exists()


def test_train_accepts_the_oracle_selection(ray_session, train_student: Path, tmp_path: Path) -> None:
    """The train stage's data preparation joins the oracle's ids from the world pool, quarantines
    nothing and shards them (a full Ray Train fit costs more than this test's budget; the train tests
    cover fitting on a selection)."""
    from edray.train.config import TrainConfig
    from edray.train.datasets import prepare_datasets
    from edray.world.oracle import write_oracle_selection
    from edray.world.pool import generate_support_rows

    world = tmp_path / "world"
    (world / "pool").mkdir(parents=True)
    pq.write_table(generate_support_rows(5, 0, 300), world / "pool" / "part-00000.parquet")
    select = write_oracle_selection(world, tmp_path / "round_0" / "select", budget=16, seed=0,
                                    gap_skills=["attribute_binding", "vertical_position"])
    cfg = TrainConfig(mode="lora", num_workers=2, batch_size=4, seed=0)
    shards, quarantine, per_worker = prepare_datasets(cfg, train_student, select / "selection.parquet", world / "pool")
    assert quarantine.num_rows == 0 and per_worker == 8 and len(shards) == 2
    got = sorted(i for shard in shards for i in shard.to_pandas()["id"])
    assert got == sorted(pq.read_table(select / "selection.parquet")["id"].to_pylist())


def test_train_fits_on_the_oracle_selection(world_dir: Path, train_student: Path, tmp_path: Path) -> None:
    """A tiny fit (one CPU worker in process) on the oracle's selection, unchanged, from the world pool."""
    from edray.train import job
    from edray.train.config import TrainConfig
    from edray.world.oracle import write_oracle_selection

    select = write_oracle_selection(world_dir, tmp_path / "round_0" / "select", budget=16, seed=0,
                                    gap_skills=["attribute_binding", "vertical_position"])
    cfg = TrainConfig(mode="lora", torch_threads=1, batch_size=4, max_steps=4, checkpoint_every=4, seed=0,
                      optim={"lr": 1e-3, "warmup_steps": 0})
    stage = job.run(cfg, tmp_path, train_student, select / "selection.parquet", world_dir / "pool")
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["counts"]["rows"] == 16 and manifest["counts"]["quarantined"] == 0 and manifest["counts"]["steps"] == 4
    assert sorted(pq.read_table(stage / TRAIN_METRICS)["step"].to_pylist()) == [1, 2, 3, 4]
