"""The grid's run configs (jobs/experiments/grid): what make_grid.py writes, valid run configs, and fair
arms (every arm of every run trains the same optimizer steps), with the seeds and budgets docs/results.md
reports."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from edray.config import load_config
from edray.pipeline.config import RunConfig
from edray.pipeline.job import stage_configs
from tests.fixtures.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
GRID = ROOT / "jobs" / "experiments" / "grid"


@pytest.fixture(scope="module")
def make_grid():
    return load_script("jobs/experiments/grid/make_grid.py", "make_grid")


@pytest.fixture(scope="module")
def runs(make_grid) -> dict[str, RunConfig]:
    return {name: load_config(RunConfig, GRID / f"{name}.yaml", section="run")
            for name in (Path(f).stem for f in make_grid.grid_files()) if name != "world"}  # fmt: skip


def test_the_yaml_files_are_what_make_grid_writes(make_grid) -> None:
    files = make_grid.grid_files()
    assert sorted(files) == sorted(p.name for p in GRID.glob("*.yaml"))
    for name, text in files.items():
        assert (GRID / name).read_text() == text, f"{name} is stale: run python jobs/experiments/grid/make_grid.py"


def test_every_arm_trains_the_same_steps_and_budgets_are_shares_of_the_pool(make_grid, runs) -> None:
    steps = set()
    for name, cfg in runs.items():
        stages = stage_configs(cfg, placeholder=True)
        steps |= {t.max_steps for t in stages.train.values()}
        budgets = {s.budget for a, s in stages.select.items() if next(x for x in cfg.arms if x.name == a).strategy != "full"}
        assert budgets <= {400, 1000, 2000}, name
        assert cfg.world_dir == make_grid.WORLD_DIR
        assert (cfg.index_dir is None) == (name == make_grid.INDEX_TASK)
    assert steps == {make_grid.MAX_STEPS}


def test_seeds_per_budget_and_the_task_free_arms_are_evaluated_on_every_task(make_grid, runs) -> None:
    assert sorted(make_grid.TASKS) == sorted(c.task for n, c in runs.items() if n in make_grid.TASKS)
    for task in make_grid.TASKS:
        cfg = runs[task]
        ed = Counter(a.select["budget"] for a in cfg.arms if a.strategy == "error_driven" and not a.mode and not a.train_mode
                     and "query" not in a.select)  # fmt: skip
        assert ed == {1000: 5, 400: 3, 2000: 3}, task
        assert cfg.arms[0].strategy == "error_driven" and cfg.arms[0].select["budget"] == 1000
        assert all(cfg.arm_eval_tasks(a) == [task] for a in cfg.arms if a.strategy in ("error_driven", "insta"))
    corner = runs[make_grid.INDEX_TASK]
    free = [a for a in corner.arms if a.strategy in ("random", "full", "oracle")]
    assert Counter(a.select.get("budget") for a in free if a.strategy == "random") == {1000: 5, 400: 3, 2000: 3}
    assert all(sorted(corner.arm_eval_tasks(a)) == sorted(make_grid.TASKS) for a in free)
    for task in make_grid.GAP_TASKS:
        noisy, rstep = runs[f"noisy_teacher_{task}"], runs[f"random_step_{task}"]
        assert noisy.world.teacher.noise.wrong_step == noisy.world.teacher.noise.wrong_skill == 0.2
        assert stage_configs(rstep, placeholder=True).diagnose.locate.method == "random"
    lora = [a for a in runs["spot_item"].arms if a.train_mode == "lora"]
    train = stage_configs(runs["spot_item"], placeholder=True).train[lora[0].name]
    assert train.optim.lr == 0.002 and train.lora.train_projector and "gate" in train.lora.targets
