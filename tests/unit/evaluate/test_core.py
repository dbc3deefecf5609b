"""The evaluate stage's pure core against hand-computed values."""

from __future__ import annotations

import json
import math

import pytest

from edray.evaluate import core
from edray.schemas import SCORE_ALL

SCORERS = {"multiple_choice": "choice", "yes_no": "exact", "number": "numeric", "open": "exact"}


def _p(model, suite, task, skills, correct, arm="tuned"):
    return {"model": model, "arm": arm, "suite": suite, "task": task, "skills": skills, "correct": correct}


def _row(scores, **key):
    hits = [s for s in scores if all(s[k] == v for k, v in key.items())]
    assert len(hits) == 1, (key, hits)
    return hits[0]


def test_binomial_stderr_hand_computed():
    assert core.binomial_stderr(3, 4) == pytest.approx(math.sqrt(0.75 * 0.25 / 4))  # 0.21650635
    assert core.binomial_stderr(0, 5) == 0.0
    assert core.binomial_stderr(5, 5) == 0.0
    with pytest.raises(ValueError):
        core.binomial_stderr(1, 0)
    with pytest.raises(ValueError):
        core.binomial_stderr(3, 2)


def test_harmonic_mean_and_retention():
    assert core.harmonic_mean(0.6, 0.9) == pytest.approx(2 * 0.6 * 0.9 / 1.5)  # 0.72
    assert core.harmonic_mean(0.0, 0.9) == 0.0
    assert core.harmonic_mean(1.0, 1.0) == 1.0
    with pytest.raises(ValueError):
        core.harmonic_mean(-0.1, 0.5)
    assert core.retention(0.6, 0.8) == pytest.approx(0.75)
    assert core.retention(0.9, 0.8, cap=True) == 1.0
    assert core.retention(0.9, 0.8, cap=False) == pytest.approx(1.125)
    assert core.retention(0.5, 0.0) is None


def test_accuracy_table_groups_tasks_and_skills():
    preds = [
        _p("m", "target", "t1", ["a", "b"], True),
        _p("m", "target", "t1", ["a"], False),
        _p("m", "target", "t2", ["b"], True),
        _p("m", "target", "t2", [], False),
    ]
    scores = core.accuracy_table(preds)
    overall = _row(scores, model="m", suite="target", task=SCORE_ALL, skill=SCORE_ALL)
    assert (overall["n"], overall["accuracy"]) == (4, 0.5)
    assert overall["stderr"] == pytest.approx(0.25)  # sqrt(.5*.5/4)
    t1 = _row(scores, task="t1", skill=SCORE_ALL)
    assert (t1["n"], t1["accuracy"]) == (2, 0.5)
    # skill a: rows 1 (right) and 2 (wrong); skill b: rows 1 and 3 (both right).
    a = _row(scores, task=SCORE_ALL, skill="a")
    b = _row(scores, task=SCORE_ALL, skill="b")
    assert (a["n"], a["accuracy"]) == (2, 0.5)
    assert (b["n"], b["accuracy"], b["stderr"]) == (2, 1.0, 0.0)
    t2b = _row(scores, task="t2", skill="b")
    assert (t2b["n"], t2b["accuracy"]) == (1, 1.0)
    # every group: 1 overall + 2 tasks + 2 skills + (t1,a) (t1,b) (t2,b)
    assert len(scores) == 8


def test_accuracy_table_does_not_depend_on_row_order():
    preds = [_p("m", "general", f"t{i % 3}", [f"s{i % 2}"], i % 4 == 0) for i in range(24)]
    assert core.accuracy_table(preds) == core.accuracy_table(list(reversed(preds)))


def test_summarize_gain_retention_combined():
    preds = []
    # base: target 1/4, general 4/5; tuned: target 3/4, general 3/5.
    for model, arm, t, g in (("base", "base", 1, 4), ("lora", "lora", 3, 3)):
        preds += [_p(model, "target", "t", [], i < t, arm) for i in range(4)]
        preds += [_p(model, "general", "g", [], i < g, arm) for i in range(5)]
    summary = {s.model: s for s in core.summarize(core.accuracy_table(preds), "base")}
    assert [s.model for s in core.summarize(core.accuracy_table(preds), "base")][0] == "base"
    base, lora = summary["base"], summary["lora"]
    assert base.retention == 1.0 and base.target_gain == 0.0
    assert base.combined == pytest.approx(2 * 0.25 * 1.0 / 1.25)  # 0.4
    assert lora.target_gain == pytest.approx(0.5)
    assert lora.retention == pytest.approx(0.75)  # 0.6 / 0.8
    assert lora.combined == pytest.approx(0.75)  # HM(0.75, 0.75)
    assert lora.general_stderr == pytest.approx(math.sqrt(0.6 * 0.4 / 5))


def test_summarize_caps_retention_only_when_asked():
    preds = []
    for model, g in (("base", 2), ("better", 4)):
        preds += [_p(model, "target", "t", [], True)] * 2
        preds += [_p(model, "general", "g", [], i < g) for i in range(4)]
    capped = {s.model: s for s in core.summarize(core.accuracy_table(preds), "base", cap_retention=True)}
    raw = {s.model: s for s in core.summarize(core.accuracy_table(preds), "base", cap_retention=False)}
    assert capped["better"].retention == 1.0
    assert raw["better"].retention == pytest.approx(2.0)
    assert raw["better"].combined == pytest.approx(2 * 1.0 * 2.0 / 3.0)


def test_summarize_reads_one_task_when_models_answered_several():
    preds = []
    # task t: base 1/4, tuned 3/4; task u: base 4/4, tuned 0/4 (pooled, the gain would be -2/8)
    for model, arm, t, u in (("base", "base", 1, 4), ("tuned", "full", 3, 0)):
        preds += [_p(model, "target", "t", [], i < t, arm) for i in range(4)]
        preds += [_p(model, "target", "u", [], i < u, arm) for i in range(4)]
        preds += [_p(model, "general", "g", [], True, arm) for _ in range(2)]
    table = core.accuracy_table(preds)
    one = {s.model: s for s in core.summarize(table, "base", task="t")}
    pooled = {s.model: s for s in core.summarize(table, "base")}
    assert one["tuned"].target_accuracy == 0.75 and one["tuned"].target_n == 4
    assert one["tuned"].target_gain == pytest.approx(0.5) and one["tuned"].retention == 1.0
    assert pooled["tuned"].target_gain == pytest.approx(-0.25) and pooled["tuned"].target_n == 8


def test_summarize_unknown_base_and_undefined_retention():
    preds = [_p("m", "target", "t", [], True), _p("m", "general", "g", [], False)]
    with pytest.raises(ValueError, match="base"):
        core.summarize(core.accuracy_table(preds), "nope")
    (only,) = core.summarize(core.accuracy_table(preds), "m")
    assert only.retention is None and only.combined is None


def test_row_skills_prefers_world_ground_truth():
    row = {"skills": ["annotated"], "metadata": json.dumps({"world": {"skills": ["b", "a", "b"]}})}
    assert core.row_skills(row) == ["a", "b"]
    assert core.row_skills(row, source="row") == ["annotated"]
    assert core.row_skills({"skills": None, "metadata": "not json"}) == []
    assert core.row_skills({"skills": ["x"], "metadata": json.dumps({"other": 1})}) == ["x"]


@pytest.mark.parametrize(
    "row",
    [
        {},
        {"skills": None, "metadata": None},
        {"skills": [], "metadata": json.dumps({"world": {"skills": []}})},
        {"skills": None, "metadata": json.dumps(["not", "an", "object"])},
    ],
)
def test_row_skills_of_a_row_naming_none_is_empty(row):
    # Never an invented skill such as "unknown": it would get a per-skill score of its own and could
    # collide with a real skill of that name. Such a row counts toward its task and overall only.
    assert core.row_skills(row) == []
    assert core.row_skills(row, source="row") == []
    scores = core.accuracy_table([_p("m", "target", "t", core.row_skills(row), True)])
    assert {s["skill"] for s in scores} == {SCORE_ALL}


def test_world_student_eval_uses_the_evaluate_row_skills():
    from edray.world import student_eval

    assert student_eval.row_skills is core.row_skills


def test_score_reply_uses_diagnose_parsing_and_scoring():
    mc = {"answer": "B", "answer_type": "multiple_choice", "choices": ["red", "blue"]}
    right = core.score_reply(mc, "Step 1: The square is blue.\nAnswer: B", None, SCORERS)
    assert right["correct"] and right["prediction"] == "B" and right["score"] == 1.0
    by_text = core.score_reply(mc, "Step 1: It is blue.\nAnswer: blue", None, SCORERS)
    assert by_text["correct"]
    wrong = core.score_reply(mc, "Step 1: hmm\nAnswer: A", None, SCORERS)
    assert not wrong["correct"] and wrong["score"] == 0.0
    num = {"answer": "3", "answer_type": "number", "choices": None}
    assert core.score_reply(num, "Step 1: count\nAnswer: three", None, SCORERS)["correct"]


def test_failed_call_is_wrong_and_keeps_reason():
    row = {"answer": "yes", "answer_type": "yes_no", "choices": ["yes", "no"]}
    out = core.score_reply(row, None, "HTTP 503 (after 5 attempts)", SCORERS)
    assert out == {"response": None, "prediction": "", "score": 0.0, "correct": False, "failure": "HTTP 503 (after 5 attempts)"}


def test_render_prompt_strips_images_and_lists_options():
    row = {"messages": [{"role": "user", "content": "<image>\nWhat colour?"}, {"role": "assistant", "content": "gold"}],
           "choices": ["red", "blue"]}
    text = core.render_prompt(row, "{question}\n{options}")
    assert "<image>" not in text and "gold" not in text
    assert text == "What colour?\nA. red\nB. blue"
