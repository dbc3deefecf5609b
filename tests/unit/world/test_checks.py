"""The world checks (a)-(e) on a run folder whose truths are known (tests/fixtures/checks.py), and on
variants of it that must fail or cannot be measured."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edray.schemas import ERRORS, EVAL_SCORES, EVAL_SCORES_SCHEMA, SELECTION, SELECTION_SCHEMA
from edray.world import checks
from edray.world.ground_truth import pool_skill_truth
from tests.fixtures.checks import BUDGET, GAPS, MISSES, ORACLE_ACC, RANDOM_ACC


@pytest.fixture(scope="module")
def results(check_run, tmp_path_factory):
    inputs = checks.run_dir_inputs(check_run.run_dir)
    assert inputs.pop("gap_source") == "the run config's pretraining config"
    out = tmp_path_factory.mktemp("checks")
    return out, inputs, checks.run_checks(out, **inputs, oracle_model="oracle", random_model="random")


def test_run_folder_inputs(check_run, results) -> None:
    _, inputs, _ = results
    assert inputs["gap_skills"] == sorted(GAPS)
    assert set(inputs["selections"]) == {"error_driven", "random", "oracle"}
    assert inputs["selections"]["error_driven"] == check_run.run_dir / "round_0" / "select"
    assert inputs["base_model"] == "base" and inputs["pool"] == check_run.world_dir / "pool"


def test_each_check_measures_the_planted_truth(check_run, results) -> None:
    _, _, res = results
    by = {r.check: r for r in res}
    assert [r.check for r in res] == ["a", "b", "c", "d", "e"]
    # (a) the base student is right on every non-gap row and wrong on every gap row.
    assert by["a"].status == "pass" and by["a"].measured["nongap_min"] == 1.0
    assert {s: by["a"].measured["per_skill"][s] for s in GAPS} == {s: 0.0 for s in GAPS}
    # (b) the planted errors: every reply well formed; gap share and steps as planted (today's world
    # has mostly one-step source tasks, so this check fails on it).
    b = by["b"].measured
    assert b["errors"] == check_run.errors and b["well_formed"] == 1.0
    assert b["gap_share"] == pytest.approx(check_run.gap_error_share, abs=1e-4)
    assert b["mean_steps"] == pytest.approx(check_run.mean_steps, abs=1e-4)
    assert by["b"].status == ("pass" if check_run.gap_error_share >= 0.7 and check_run.mean_steps >= 2 else "fail")
    # (c) every planted step located and named exactly.
    assert by["c"].status == "pass" and by["c"].measured["joint_accuracy"] == 1.0
    # (d) BUDGET - MISSES gap rows among the targeted rows; the 10 replay rows do not count.
    arms = by["d"].measured["arms"]
    assert arms["error_driven"]["targeted"] == BUDGET and arms["error_driven"]["replay"] == 10
    assert arms["error_driven"]["gap_rows"] == BUDGET - MISSES
    assert arms["error_driven"]["precision"] == pytest.approx(check_run.precision) and arms["oracle"]["precision"] == 1.0
    assert abs(arms["random"]["precision"] - by["d"].measured["pool_gap_share"]) < 0.05
    assert by["d"].status == "pass"
    # (e) oracle - random, with a paired bootstrap interval around it.
    e = by["e"].measured
    assert e["difference"] == pytest.approx(ORACLE_ACC - RANDOM_ACC)
    assert e["ci95"][0] < e["difference"] < e["ci95"][1] and e["ci95"][0] > 0
    assert by["e"].status == "pass"
    assert [r.passed for r in res] == [r.status == "pass" for r in res]


def test_written_files_and_table(results) -> None:
    out, _, res = results
    saved = json.loads((out / checks.CHECKS_JSON).read_text())
    assert [d["status"] for d in saved] == [r.status for r in res]
    frame = pd.read_parquet(out / checks.CHECKS_PARQUET)
    assert list(frame["check"]) == ["a", "b", "c", "d", "e"]
    assert json.loads(frame.loc[2, "measured"])["joint_accuracy"] == 1.0
    text = checks.format_checks(res)
    for r in res:
        assert f"({r.check}) {r.name}" in text
    passed = sum(r.passed for r in res)
    assert f"{passed} of 5 checks passed" in text


def _copy_diagnose(check_run, tmp_path: Path) -> Path:
    d = tmp_path / "diagnose"
    shutil.copytree(check_run.run_dir / "round_0" / "diagnose", d)
    return d


def test_located_steps_fail_when_a_tenth_is_off(check_run, results, tmp_path: Path) -> None:
    _, inputs, _ = results
    d = _copy_diagnose(check_run, tmp_path)
    errors = pq.read_table(d / ERRORS).to_pylist()
    moved = 0
    for e in errors:
        if moved < len(errors) // 10 + 1 and len(e["steps"]) >= 2:
            e["step"] = 1 if e["step"] != 1 else 2
            moved += 1
    pq.write_table(pa.Table.from_pylist(errors, schema=pq.read_schema(d / ERRORS)), d / ERRORS)
    rows = checks.read_eval_rows_by_id(inputs["validation"])
    got = checks.check_located_steps(d, rows)
    assert got.status == "fail" and not got.passed
    assert got.measured["joint_accuracy"] == pytest.approx(1 - moved / len(errors), abs=1e-4)


def test_precision_fails_below_threshold_and_needs_an_error_driven_arm(check_run, results, tmp_path: Path) -> None:
    _, inputs, _ = results
    truth = pool_skill_truth(inputs["pool"])
    gap = sorted(i for i, s in truth.items() if set(s) & set(GAPS))[:10]
    other = sorted(i for i, s in truth.items() if not set(s) & set(GAPS))[:10]
    rows = [{"id": i, "source": "pool", "strategy": "error_driven", "round": 0, "gap_id": 0, "skill": "x", "error_ids": [],
             "query": "x", "retrieval_mode": "bm25", "score": 1.0, "rank": 1} for i in gap + other]
    (tmp_path / "half").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=SELECTION_SCHEMA), tmp_path / "half" / SELECTION)
    got = checks.check_selection_precision({"ed": tmp_path / "half"}, truth, GAPS)
    assert got.status == "fail" and got.measured["arms"]["ed"]["precision"] == 0.5
    got = checks.check_selection_precision({"random": inputs["selections"]["random"]}, truth, GAPS)
    assert got.status == "not_measured" and not got.passed


def test_headroom_fails_or_is_not_measured(check_run, results, tmp_path: Path) -> None:
    _, inputs, _ = results
    ev = inputs["evaluate_dir"]
    reverse = checks.check_headroom(ev, "random", "oracle")
    assert reverse.status == "fail" and reverse.measured["difference"] == pytest.approx(RANDOM_ACC - ORACLE_ACC)
    assert checks.check_headroom(ev, None, None).status == "not_measured"
    missing = checks.check_headroom(ev, "nobody", "random")
    assert missing.status == "not_measured" and "nobody" in missing.explanation


def test_headroom_compares_both_arms_on_the_runs_task(check_run, results, tmp_path: Path) -> None:
    """A random arm evaluated on every target task has an overall target score over all of them; the
    oracle is evaluated on the run's task only. The difference must be taken on the same task."""
    from edray.schemas import EVAL_PREDICTIONS, EVAL_PREDICTIONS_SCHEMA

    _, inputs, _ = results
    ev = inputs["evaluate_dir"]
    preds = pq.read_table(ev / EVAL_PREDICTIONS).to_pylist()
    extra = [dict(p, task="other_task", id=f"other-{p['id']}", correct=False)
             for p in preds if p["model"] == "random" and p["suite"] == "target"]
    scores = pq.read_table(ev / EVAL_SCORES).to_pylist()
    for s in scores:  # the random arm's overall target score now averages in a task it fails entirely
        if s["model"] == "random" and s["suite"] == "target" and s["task"] == "*" and s["skill"] == "*":
            s["accuracy"] = RANDOM_ACC / 2
    (tmp_path / "ev").mkdir()
    pq.write_table(pa.Table.from_pylist(preds + extra, schema=EVAL_PREDICTIONS_SCHEMA), tmp_path / "ev" / EVAL_PREDICTIONS)
    pq.write_table(pa.Table.from_pylist(scores, schema=EVAL_SCORES_SCHEMA), tmp_path / "ev" / EVAL_SCORES)
    got = checks.check_headroom(tmp_path / "ev", "oracle", "random")
    assert got.measured["random"] == pytest.approx(RANDOM_ACC)
    assert got.measured["difference"] == pytest.approx(ORACLE_ACC - RANDOM_ACC)
    assert got.measured["ci95"][0] < got.measured["difference"] < got.measured["ci95"][1]


def test_student_gaps_fail_when_a_gap_is_learned(check_run, results, tmp_path: Path) -> None:
    _, inputs, _ = results
    scores = pq.read_table(inputs["evaluate_dir"] / EVAL_SCORES).to_pylist()
    for s in scores:
        if s["model"] == "base" and s["suite"] == "general" and s["skill"] == "vertical_position":
            s["accuracy"] = 0.95
    (tmp_path / "ev").mkdir()
    pq.write_table(pa.Table.from_pylist(scores, schema=EVAL_SCORES_SCHEMA), tmp_path / "ev" / EVAL_SCORES)
    general = pq.read_table(inputs["general"]).to_pylist()
    got = checks.check_student_gaps(tmp_path / "ev", general, GAPS)
    assert got.status == "fail" and "vertical_position" in got.explanation
    assert checks.check_student_gaps(tmp_path / "ev", general, GAPS, base_model="nobody").status == "not_measured"


def test_missing_stage_output_is_named(check_run, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(check_run.run_dir, run)
    (run / "round_0" / "diagnose" / ERRORS).unlink()
    with pytest.raises(FileNotFoundError, match="errors.parquet"):
        checks.run_dir_inputs(run)


def test_gap_skills_come_from_the_student_manifest(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"config": {"mix": {"count_comparison": 0.01, "spot": 2.0}}}))
    assert checks.designed_gap_skills(tmp_path) == (["count_comparison"], f"{tmp_path / 'manifest.json'} (pretraining config)")
    (tmp_path / "manifest.json").write_text(json.dumps({"config": {"gaps": ["vertical_position"], "mix": {}}}))
    assert checks.designed_gap_skills(tmp_path)[0] == ["vertical_position"]
    skills, source = checks.designed_gap_skills(tmp_path / "none")
    assert skills == ["attribute_binding", "count_comparison", "vertical_position"] and "default" in source


def test_precision_judges_the_skill_query_and_reports_the_raw_step_ablation(check_run, results, tmp_path: Path) -> None:
    _, inputs, _ = results
    truth = pool_skill_truth(inputs["pool"])
    gap = sorted(i for i, s in truth.items() if set(s) & set(GAPS))[:10]
    other = sorted(i for i, s in truth.items() if not set(s) & set(GAPS))[:10]

    def selection(name: str, ids: list[str], query: str) -> Path:
        rows = [{"id": i, "source": "pool", "strategy": "error_driven", "round": 0, "gap_id": 0, "skill": "x", "error_ids": [],
                 "query": "x", "retrieval_mode": "bm25", "score": 1.0, "rank": 1} for i in ids]  # fmt: skip
        (tmp_path / name).mkdir()
        pq.write_table(pa.Table.from_pylist(rows, schema=SELECTION_SCHEMA), tmp_path / name / SELECTION)
        (tmp_path / name / "manifest.json").write_text(json.dumps({"config": {"query": query}}))
        return tmp_path / name

    method, raw = selection("method", gap, "skill"), selection("raw", other, "step")
    got = checks.check_selection_precision({"ed": method, "ed-step": raw}, truth, GAPS)
    assert got.status == "pass", got.explanation
    assert got.measured["arms"]["ed-step"]["precision"] == 0.0 and got.measured["arms"]["ed-step"]["query"] == "step"
    assert "ed-step 0.00 (budget 10, " in got.explanation and "step query, not judged" in got.explanation
    assert got.measured["arms"]["ed"]["query"] == "skill" and got.measured["arms"]["ed"]["precision"] == 1.0
    # the ablation alone is not the method: nothing to judge
    assert checks.check_selection_precision({"ed-step": raw}, truth, GAPS).status == "not_measured"


def test_precision_is_not_judged_for_a_task_that_needs_no_gap_skill(check_run, results, tmp_path: Path) -> None:
    _, inputs, _ = results
    truth = pool_skill_truth(inputs["pool"])
    other = sorted(i for i, s in truth.items() if not set(s) & set(GAPS))[:10]
    rows = [{"id": i, "source": "pool", "strategy": "error_driven", "round": 0, "gap_id": 0, "skill": "x", "error_ids": [],
             "query": "x", "retrieval_mode": "bm25", "score": 1.0, "rank": 1} for i in other]  # fmt: skip
    (tmp_path / "ctrl").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=SELECTION_SCHEMA), tmp_path / "ctrl" / SELECTION)
    control = checks.check_selection_precision({"ed": tmp_path / "ctrl"}, truth, GAPS, task_skills=("size_recognition",))
    assert control.status == "not_measured" and "no gap" in control.explanation
    assert control.measured["arms"]["ed"]["precision"] == 0.0  # still measured
    # the same selection for a task through a gap is judged, and fails
    gap_task = checks.check_selection_precision({"ed": tmp_path / "ctrl"}, truth, GAPS, task_skills=(sorted(GAPS)[0], "size_recognition"))
    assert gap_task.status == "fail"
    # the world's own controls need no gap skill; its gap tasks do; a task the world does not define is judged
    world_gaps = {"attribute_binding", "count_comparison", "vertical_position"}
    assert not checks._target_skills(["big_one_shape", "same_colour_count"]) & world_gaps
    assert "vertical_position" in checks._target_skills(["big_one_shape", "corner"])
    assert checks._target_skills(["corner", "not-a-task"]) is None and checks._target_skills([]) is None


def test_student_gaps_from_accuracies_judges_each_skill() -> None:
    from edray.world.pool import generate_eval_rows
    from edray.world.student_eval import chance_by_skill

    rows = generate_eval_rows("general", "validation", 400, 11).to_pylist()
    chance = chance_by_skill(rows)
    gaps = sorted(GAPS)
    assert set(gaps) <= set(chance)
    strong = {s: (chance[s] + 0.05 if s in gaps else 0.9) for s in chance}
    assert checks.student_gaps(strong, rows, gaps).status == "pass"

    nongap = next(s for s in sorted(chance) if s not in gaps)
    weak = checks.student_gaps({**strong, nongap: 0.84}, rows, gaps)
    assert weak.status == "fail" and f"{nongap} 0.84" in weak.explanation
    learned = checks.student_gaps({**strong, gaps[0]: chance[gaps[0]] + 0.11}, rows, gaps)
    assert learned.status == "fail" and gaps[0] in learned.explanation and nongap not in learned.explanation
    assert learned.measured["gap_over_chance_max"] == pytest.approx(0.11, abs=1e-3)

    missing = {s: a for s, a in strong.items() if s != gaps[0]}
    assert checks.student_gaps(missing, rows, gaps).status == "not_measured"
    assert checks.student_gaps({}, rows, gaps).status == "not_measured"

    text = checks.format_student_gaps(learned.to_dict(), {gaps[0]: 7})
    assert f"{gaps[0]} (gap)" in text and f"{nongap} (gap)" not in text
    assert "(a) student_gaps  FAIL" in text and text.splitlines()[-1].startswith("    needs: non-gap skills >= 0.85")
