"""One run's arms evaluated on several target tasks of the world (``eval_tasks``): random and full-pool
arms do not depend on the task, so they are trained once and compared on every task. scores.parquet holds
rows per (model, task); the summary and the arm records report the run's own task."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow


def test_arms_are_evaluated_on_their_tasks_and_report_the_runs_task(ray_session, world_dir, train_student, tmp_path) -> None:
    from edray.evaluate import job as evaluate_job
    from edray.pipeline.arms import eval_parts, round_works, run_arms
    from edray.pipeline.config import RunConfig
    from edray.pipeline.job import RunPaths, stage_configs
    from edray.schemas import EVAL_PREDICTIONS, EVAL_SCORES, SCORE_ALL
    from edray.world.tasks import TARGET_TASK_BY_NAME

    task, other = sorted(TARGET_TASK_BY_NAME)[:2]
    cfg = RunConfig.model_validate(
        {"world_dir": str(world_dir), "student": str(train_student), "task": task, "eval_tasks": [other],
         "train": {"mode": "lora", "batch_size": 4, "max_steps": 2, "torch_threads": 1, "lora": {"rank": 4, "alpha": 8}},
         "evaluate": {"generation": {"max_tokens": 12, "batch_size": 64}},
         "arms": [{"name": "every-task", "strategy": "oracle", "select": {"budget": 8, "seed": 0}},
                  {"name": "own-task", "strategy": "oracle", "select": {"budget": 8, "seed": 1}, "eval_tasks": []}]}
    )  # fmt: skip
    assert cfg.all_eval_tasks() == [task, other]
    run_dir = tmp_path / "run"
    paths = RunPaths(run_dir, world_dir, train_student)
    stages = stage_configs(cfg, paths, 0, student=train_student)
    works = round_works(cfg, stages, paths, 0, train_student)
    records = run_arms(works, run_dir, 0)
    assert all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    collected = evaluate_job.collect(stages.evaluate, run_dir, eval_parts(works, records))

    predictions = pq.read_table(collected / EVAL_PREDICTIONS).to_pylist()
    tasks_of = {m: {p["task"] for p in predictions if p["model"] == m and p["suite"] == "target"} for m in ("base", "every-task", "own-task")}
    assert tasks_of == {"base": {task, other}, "every-task": {task, other}, "own-task": {task}}
    n_test = pq.read_metadata(world_dir / "eval" / task / "test.parquet").num_rows
    scores = pq.read_table(collected / EVAL_SCORES).to_pylist()
    per_task = {(s["model"], s["task"]): s for s in scores if s["suite"] == "target" and s["skill"] == SCORE_ALL}
    assert {(m, t) for m, t in per_task if t != SCORE_ALL} == {("base", task), ("base", other), ("every-task", task),
                                                               ("every-task", other), ("own-task", task)}  # fmt: skip
    assert all(per_task[(m, task)]["n"] == n_test for m in ("base", "every-task", "own-task"))

    # the summary and the arm records read the run's task, never the pooled target rows
    summary = {s["model"]: s for s in json.loads((collected / "manifest.json").read_text())["metrics"]["summary"]}
    by_arm = {r["arm"]: r for r in records}
    for m in ("base", "every-task", "own-task"):
        assert summary[m]["target_accuracy"] == pytest.approx(per_task[(m, task)]["accuracy"])
        assert summary[m]["target_n"] == n_test
        assert by_arm[m]["target_accuracy"] == pytest.approx(per_task[(m, task)]["accuracy"])
    assert summary["every-task"]["target_gain"] == pytest.approx(per_task[("every-task", task)]["accuracy"] - per_task[("base", task)]["accuracy"])

    # jobs/experiments/summarize.py reads the run: one row per (arm, task evaluated), the items paired by id
    from edray.pipeline.arms import write_arms_table

    (run_dir / "run_config.json").write_text(cfg.model_dump_json())
    write_arms_table(run_dir, records)
    res = _summarize().read_run(run_dir)
    rows = {(r["model"], r["task"]): r for r in res.arms.to_dict("records")}
    assert set(rows) == {k for k in per_task if k[1] != SCORE_ALL}
    for (m, t), r in rows.items():
        assert r["target_accuracy"] == pytest.approx(per_task[(m, t)]["accuracy"]) and r["n_test"] == per_task[(m, t)]["n"]
        assert r["trained_for"] == task and r["strategy"] == ("none" if m == "base" else "oracle")
    pool_rows = sum(pq.read_metadata(p).num_rows for p in (world_dir / "pool").rglob("*.parquet"))
    assert rows[("every-task", other)]["budget_share"] == pytest.approx(8 / pool_rows, abs=1e-4)
    assert len(res.items[(res.items.model == "every-task")]) == 2 * n_test
    text = _summarize().build(res, tmp_path / "results", "results", [run_dir], gap_tasks=(task, other), controls=())
    assert "### Target accuracy by task, strategy and budget" in text and f"| {other} |" in text
    csv = (tmp_path / "results" / "arms.csv").read_text().splitlines()
    assert csv[0].startswith("task,strategy,budget_share,seed,update,target_accuracy,retention,n_test") and len(csv) == 1 + len(rows)


def _summarize():
    from tests.fixtures.scripts import load_script

    return load_script("jobs/experiments/summarize.py", "grid_summarize")


def test_eval_tasks_must_be_written_by_the_generated_world() -> None:
    from pydantic import ValidationError

    from edray.pipeline.config import RunConfig
    from edray.world.tasks import TARGET_TASK_BY_NAME

    task, other, third = sorted(TARGET_TASK_BY_NAME)[:3]
    with pytest.raises(ValidationError, match="not in world.eval.target_tasks"):
        RunConfig.model_validate({"task": task, "eval_tasks": [third], "world": {"eval": {"target_tasks": [task, other]}}})
    ok = RunConfig.model_validate({"task": task, "eval_tasks": [other, task], "world": {"eval": {"target_tasks": [task, other]}}})
    assert ok.all_eval_tasks() == [task, other]
