"""The run config links every stage to the one before it (no Ray, no models)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edray.config import ConfigError, load_config
from edray.pipeline.config import RunConfig
from edray.pipeline.job import RunPaths, stage_configs


def _paths(tmp_path: Path) -> RunPaths:
    return RunPaths(run_dir=tmp_path / "run", world_dir=tmp_path / "world", student=tmp_path / "student")


def test_stages_are_linked_through_the_run_folder(tmp_path: Path) -> None:
    cfg = RunConfig.model_validate(
        {
            "task": "corner",
            "arms": [
                {"name": "method", "strategy": "error_driven", "mode": "bm25", "train_mode": "spider"},
                {"name": "rand", "strategy": "random"},
            ],
            "select": {"budget": 123, "contamination": {"evaluation": ["extra.parquet"]}},
            "train": {"mode": "lora"},
        }
    )
    paths = _paths(tmp_path)
    s = stage_configs(cfg, paths, round_index=0, base_url="http://127.0.0.1:9999/v1")

    val = tmp_path / "world" / "eval" / "corner" / "validation.parquet"
    test = tmp_path / "world" / "eval" / "corner" / "test.parquet"
    assert s.index.pool == str(tmp_path / "world" / "pool")
    assert s.diagnose.validation == str(val)
    assert s.diagnose.student.client.base_url == "http://127.0.0.1:9999/v1"
    assert s.diagnose.teacher.model == cfg.serve.teacher_model

    method, rand = s.select["method"], s.select["rand"]
    assert (method.strategy, method.mode, method.budget) == ("error_driven", "bm25", 123)
    assert (rand.strategy, rand.budget) == ("random", 123)
    assert method.index_dir == str(tmp_path / "run" / "index")
    assert method.diagnose_dir == str(tmp_path / "run" / "round_0" / "diagnose")
    assert set(method.contamination.evaluation) == {"extra.parquet", str(val), str(test)}

    assert s.train["method"].mode == "spider" and s.train["rand"].mode == "lora"
    assert paths.arm_dir(cfg.arms, cfg.arms[0]) == tmp_path / "run"
    assert paths.arm_dir(cfg.arms, cfg.arms[1]) == tmp_path / "run" / "arms" / "rand"

    models = {m.name: m for m in s.evaluate.models}
    assert s.evaluate.base.path == str(tmp_path / "student")
    assert models["method"].path == str(tmp_path / "run" / "round_0" / "train") and models["method"].arm == "spider"
    assert models["rand"].path == str(tmp_path / "run" / "arms" / "rand" / "round_0" / "train") and models["rand"].arm == "random"
    assert s.evaluate.target == [str(test)]


def test_later_rounds_continue_only_the_main_arm(tmp_path: Path) -> None:
    cfg = RunConfig(rounds=2)
    s = stage_configs(cfg, _paths(tmp_path), round_index=1)
    assert s.diagnose.round == 1 and s.select[cfg.arms[0].name].round == 1
    # round 1 diagnoses other weights than round 0: it must not share round 0's cached replies
    first = stage_configs(cfg, _paths(tmp_path), round_index=0)
    assert s.diagnose.student.client.model != first.diagnose.student.client.model
    assert [m.name for m in s.evaluate.models] == [cfg.arms[0].name]
    assert s.evaluate.models[0].path.endswith("round_1/train")


def test_a_mistyped_section_field_fails_before_any_work(tmp_path: Path) -> None:
    bad = tmp_path / "run.yaml"
    bad.write_text("select:\n  budjet: 10\n")
    with pytest.raises(ConfigError, match="budjet"):
        load_config(RunConfig, bad)
    with pytest.raises(ConfigError, match="unique"):
        load_config(RunConfig, None, ["arms=[{name: a}, {name: a}]"])


def test_arm_overrides_reach_only_their_arm(tmp_path: Path) -> None:
    cfg = RunConfig(
        select={"budget": 500, "seed": 3},
        train={"optim": {"lr": 0.001, "warmup_steps": 2}},
        arms=[
            {"name": "main"},
            {"name": "small", "select": {"budget": 50, "query": "step"}, "train": {"seed": 7, "optim": {"lr": 0.0005}}},
        ],
    )
    s = stage_configs(cfg, _paths(tmp_path))
    assert (s.select["main"].budget, s.select["main"].query, s.select["main"].seed) == (500, "skill", 3)
    assert (s.select["small"].budget, s.select["small"].query, s.select["small"].seed) == (50, "step", 3)
    assert s.train["small"].seed == 7 and s.train["main"].seed == 0
    # nested sections merge key by key: the arm's lr, the section's warm-up
    assert s.train["small"].optim.lr == 0.0005 and s.train["small"].optim.warmup_steps == 2
    assert s.train["main"].optim.lr == 0.001
    with pytest.raises(ConfigError, match="small"):
        load_config(RunConfig, None, ["arms=[{name: small, select: {budjet: 5}}]"])


def test_other_weights_get_another_served_name(tmp_path: Path) -> None:
    """Diagnose fingerprints and the response cache key on the served name: new weights, new name."""
    import os

    from edray.pipeline.job import student_name

    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"x" * 10)
    assert student_name(0, a) == student_name(0, a) != student_name(0, b)
    before = student_name(0, a)
    (a / "model.safetensors").write_bytes(b"y" * 11)  # re-pretrained in place
    os.utime(a / "model.safetensors", ns=(1, 1))
    assert student_name(0, a) != before
    cfg = RunConfig()
    paths = _paths(tmp_path)
    assert stage_configs(cfg, paths).diagnose.student.client.model == student_name(0, paths.student)


def test_given_world_and_student_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The arms run as Tune trials in their own working folders: a relative world_dir or student given in
    the config must reach them as absolute paths (a relative one made every trial fail)."""
    from edray.pipeline.job import Progress, prepare
    from edray.schemas import WORLD_POOL_DIR

    (tmp_path / "w" / WORLD_POOL_DIR).mkdir(parents=True)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    cfg = RunConfig(world_dir="w", student="s", task="corner", index={}, report=False)
    paths = prepare(cfg, tmp_path / "run", Progress(1))
    assert paths.world_dir == tmp_path / "w" and paths.student == tmp_path / "s"
    assert paths.world_dir.is_absolute() and paths.student.is_absolute()
