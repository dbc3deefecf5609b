"""`edray world generate`: the Ray Data job writes the pool, the splits and the manifest, deterministically."""

from __future__ import annotations

import json
from pathlib import Path

import lance
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from edray.schemas import EVAL_SCHEMA, SUPPORT_SCHEMA, WORLD_EVAL_DIR, WORLD_INFO, WORLD_POOL_DIR, WORLD_POOL_LANCE
from edray.world import job
from edray.world.config import WorldConfig
from edray.world.tasks import TARGET_TASKS

ROWS = 1000


def _config() -> WorldConfig:
    return WorldConfig.model_validate(
        {
            "pool": {"pool_size": ROWS, "batch_size": 500, "rows_per_file": 1000, "num_cpus": 0.5,
                     "mix": {"attribute_binding": 0.2}},
            "eval": {"val_size": 20, "test_size": 20, "general_size": 30, "target_tasks": ["corner", "spot_item"]},
        }
    )


def _sorted_pool(path: Path):
    table = pq.read_table(path / WORLD_POOL_DIR)
    return table.sort_by("id")


@pytest.mark.slow
def test_job_writes_a_deterministic_world(ray_session, tmp_path: Path) -> None:
    cfg = _config()
    a = job.run(cfg, tmp_path / "a")
    # A second run, in-process this time (no Ray) and with a Lance copy (the formats do not change the
    # rows), must produce the same rows and splits.
    with_lance = cfg.model_copy(update={"pool": cfg.pool.model_copy(update={"formats": ["parquet", "lance"]})})
    b = job.run(with_lance, tmp_path / "b", use_ray=False)
    pool_a, pool_b = _sorted_pool(a), _sorted_pool(b)
    assert pool_a.num_rows == ROWS and pool_a.schema.equals(SUPPORT_SCHEMA)
    assert pool_a.column("skills").null_count == ROWS
    assert len(set(pool_a.column("id").to_pylist())) == ROWS
    assert pool_a.equals(pool_b)  # byte-identical rows, PNG bytes included, across runs
    assert lance.dataset(str(b / WORLD_POOL_LANCE)).to_table().sort_by("id").equals(pool_a)

    for task in ("corner", "spot_item", "general"):
        for split, n in (("validation", 20 if task != "general" else 30), ("test", 20 if task != "general" else 30)):
            t = pq.read_table(a / WORLD_EVAL_DIR / task / f"{split}.parquet")
            assert t.num_rows == n and t.schema.equals(EVAL_SCHEMA)
            assert t.equals(pq.read_table(b / WORLD_EVAL_DIR / task / f"{split}.parquet"))
    assert not (a / WORLD_EVAL_DIR / "outnumber").exists()

    manifest = json.loads((a / "manifest.json").read_text())
    assert (a / "_SUCCESS").exists() and manifest["counts"]["pool"] == ROWS
    assert manifest["counts"]["corner/test"] == 20
    info = json.loads((a / WORLD_INFO).read_text())
    assert [t["name"] for t in info["target_tasks"]] == [t.name for t in TARGET_TASKS if t.name in ("corner", "spot_item")]

    # Same config: a no-op.
    stamp = (a / "manifest.json").stat().st_mtime_ns
    assert job.run(cfg, a) == a and (a / "manifest.json").stat().st_mtime_ns == stamp


def test_cli_generates_a_world(ray_session, tmp_path: Path) -> None:
    from edray.cli import app

    out = tmp_path / "w"
    result = CliRunner().invoke(
        app,
        ["world", "generate", "--out", str(out), "--pool-size", "300", "--mix", "attribute_binding=0.01",
         "--set", "eval.val_size=5", "--set", "eval.test_size=5", "--set", "eval.general_size=5",
         "--set", "pool.num_cpus=0.5"],
    )
    assert result.exit_code == 0, result.output
    assert pq.read_table(out / WORLD_POOL_DIR).num_rows == 300
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["pool"]["mix"] == {"attribute_binding": 0.01}
    bad = CliRunner().invoke(app, ["world", "generate", "--out", str(tmp_path / "x"), "--mix", "juggling=1"])
    # A config error (exit code 2, the message naming the bad skill), not a crash, and nothing written.
    assert bad.exit_code == 2 and isinstance(bad.exception, SystemExit), bad.output
    assert "config error" in bad.output and "juggling" in bad.output
    assert not (tmp_path / "x").exists()


def test_world_dir_fixture_layout(world_dir: Path) -> None:
    assert pq.read_table(world_dir / WORLD_POOL_DIR).num_rows == 3000
    for t in TARGET_TASKS:
        assert pq.read_table(world_dir / WORLD_EVAL_DIR / t.name / "validation.parquet").num_rows == 100
    assert (world_dir / "_SUCCESS").exists()


def test_a_world_generated_by_other_code_is_generated_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The cache key holds the source of the modules that write the rows: the same config after an edit of a
    # wording or a question generator must not return the stale world.
    cfg = WorldConfig.model_validate(
        {"pool": {"pool_size": 40, "batch_size": 40}, "eval": {"val_size": 3, "test_size": 3, "general_size": 3, "target_tasks": ["corner"]}}
    )
    out = job.run(cfg, tmp_path / "w", use_ray=False)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert job.run(cfg, out, use_ray=False) == out and (out / "manifest.json").stat().st_mtime_ns == stamp
    real = job.code_digest(job.ROW_MODULES)
    monkeypatch.setattr(job, "code_digest", lambda modules: "0" * 16 if modules == job.ROW_MODULES else real)
    job.run(cfg, out, use_ray=False)
    assert (out / "manifest.json").stat().st_mtime_ns != stamp
    assert pq.read_table(out / WORLD_POOL_DIR).num_rows == 40
