"""Runs of a grid share one index (``index_dir``) and evaluate arms on several tasks (``eval_tasks``):
the links the run config fills in, without Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edray.config import ConfigError
from edray.pipeline.config import RunConfig
from edray.pipeline.job import RunPaths, shared_index, stage_configs


def _index(folder: Path, pool: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "index_info.json").write_text("{}")
    (folder / "manifest.json").write_text(json.dumps({"config": {"pool": str(pool)}}))
    return folder


def test_a_shared_index_must_be_complete_and_over_the_same_pool(tmp_path) -> None:
    pool = tmp_path / "world" / "pool"
    shared_index(_index(tmp_path / "a" / "index", pool), pool)
    with pytest.raises(ConfigError, match="indexes the pool"):
        shared_index(_index(tmp_path / "b" / "index", tmp_path / "other" / "pool"), pool)
    with pytest.raises(ConfigError, match="no completed index"):
        shared_index(tmp_path / "missing", pool)


def test_select_reads_the_shared_index_and_evaluate_every_task(tmp_path) -> None:
    cfg = RunConfig.model_validate(
        {"task": "corner", "eval_tasks": ["spot_item"], "index_dir": str(tmp_path / "first" / "index"),
         "arms": [{"name": "ed"}, {"name": "random", "strategy": "random", "eval_tasks": ["spot_item", "outnumber"]}]}
    )  # fmt: skip
    paths = RunPaths(tmp_path / "run", tmp_path / "world", tmp_path / "student")
    stages = stage_configs(cfg, paths, 0)
    assert all(s.index_dir == str(tmp_path / "first" / "index") for s in stages.select.values())
    assert cfg.arm_eval_tasks(cfg.arms[0]) == ["corner", "spot_item"]
    assert cfg.arm_eval_tasks(cfg.arms[1]) == ["corner", "spot_item", "outnumber"]
    assert stages.evaluate.target == [str(paths.split(t, "test")) for t in ("corner", "spot_item", "outnumber")]
    assert stages.evaluate.main_task == "corner"
    # the select stage's contamination guard covers every evaluated task's test split
    guard = stages.select["ed"].contamination.evaluation
    assert all(str(paths.split(t, "test")) in guard for t in ("corner", "spot_item", "outnumber"))
    single = stage_configs(RunConfig.model_validate({"task": "corner"}), paths, 0)
    assert single.evaluate.main_task is None and single.select["error_driven"].index_dir == str(tmp_path / "run" / "index")
