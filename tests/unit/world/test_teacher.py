"""The world teacher: answer switch, skill analysis, annotation, step verdicts, noise, determinism."""

from __future__ import annotations

import asyncio
import json
import math
import time

import pytest

from edray.serve.engine import ChatRequest, Engine, EngineError
from edray.world.config import TeacherConfig, TeacherNoise
from edray.world.pool import generate_eval_rows, generate_support_rows, true_skills
from edray.world.skills import parse_step, skill_of_phrase, skill_phrases
from edray.world.teacher import WorldTeacher
from edray.world.teacher_prompts import (
    build_annotation_messages,
    build_answer_switch_messages,
    build_skill_messages,
    parse_skill_reply,
)


def _run(teacher: WorldTeacher, **kw) -> object:
    return asyncio.run(teacher.generate(ChatRequest(model="world-teacher", **kw)))


@pytest.fixture(scope="module")
def locate_rows() -> list[dict]:
    return generate_eval_rows("corner", "validation", 20, seed=2, form="open").to_pylist()


def _flip(step: str) -> str:
    return step.replace("left", "@").replace("right", "left").replace("@", "right")


def _probs(teacher: WorldTeacher, row: dict, steps: list[str], gold_first: bool = True) -> dict[str, float]:
    world = json.loads(row["metadata"])["world"]
    gold = world["answer_value"]
    other = "right" if gold == "left" else "left"
    options = [gold, other] if gold_first else [other, gold]
    hint = "A" if gold_first else "B"
    question = row["messages"][0]["content"].split("\n", 1)[1]
    messages = build_answer_switch_messages(question, options, hint, 0.6, steps)
    res = _run(teacher, messages=messages, images=row["images"], logprobs=True, top_logprobs=5, max_tokens=1)
    top = dict(res.logprobs[0].top)
    assert res.text == max(top, key=top.get)
    probs = {"gold": math.exp(top[hint]), "wrong": math.exp(top["B" if gold_first else "A"])}
    assert abs(sum(probs.values()) - 1) < 1e-6
    return probs


def test_is_an_engine() -> None:
    teacher = WorldTeacher()
    assert isinstance(teacher, Engine)
    assert teacher.model_ids() == ["world-teacher"]


def test_answer_switch_follows_the_first_contradicting_step(locate_rows: list[dict]) -> None:
    teacher = WorldTeacher()
    for i, row in enumerate(locate_rows[:8]):
        gold_steps = json.loads(row["metadata"])["world"]["steps"]
        prior = _probs(teacher, row, [], gold_first=i % 2 == 0)
        assert prior["gold"] == pytest.approx(0.6)
        correct = _probs(teacher, row, gold_steps, gold_first=i % 2 == 0)
        assert correct["gold"] > 0.6  # correct steps move towards the gold option
        wrong = _probs(teacher, row, [gold_steps[0], _flip(gold_steps[1])], gold_first=i % 2 == 0)
        assert wrong["wrong"] - wrong["gold"] > 0.5
        early = _probs(teacher, row, [gold_steps[0]], gold_first=i % 2 == 0)
        assert early["gold"] > early["wrong"]


def test_answer_switch_with_many_options_shifts_to_the_option_the_step_names() -> None:
    teacher = WorldTeacher()
    row = generate_eval_rows("corner", "validation", 1, seed=4, form="multiple_choice").to_pylist()[0]
    world = json.loads(row["metadata"])["world"]
    gold_letter = row["answer"]
    steps = world["steps"]
    flipped = _flip(steps[1])
    question = row["messages"][0]["content"].split("\n", 1)[1]
    messages = build_answer_switch_messages(question, row["choices"], gold_letter, 0.6, [steps[0], flipped])
    res = _run(teacher, messages=messages, images=row["images"], logprobs=True, top_logprobs=4)
    row_word = steps[0].split()[-2]
    col_word = flipped.split()[-2]
    assert row["choices"][ord(res.text) - 65] == f"{row_word} {col_word}"


def test_answer_switch_understands_a_differently_worded_template(locate_rows: list[dict]) -> None:
    row = locate_rows[0]
    world = json.loads(row["metadata"])["world"]
    text = (
        f"Question: {row['messages'][0]['content']}\nOptions:\nA. left\nB. right\n"
        f"Hint: Option {'A' if world['answer_value'] == 'left' else 'B'} has a 70% chance of being right.\n"
        f"Reasoning so far:\nStep 1: {world['steps'][0]}\n"
        "Given the reasoning so far, which option is correct? Reply with one letter (A, B)."
    )
    res = _run(WorldTeacher(), messages=[{"role": "user", "content": text}], images=row["images"], logprobs=True, top_logprobs=2)
    assert res.text == ("A" if world["answer_value"] == "left" else "B")


def test_answer_switch_without_image_is_a_client_error(locate_rows: list[dict]) -> None:
    messages = build_answer_switch_messages("q", ["left", "right"], "A", 0.6, ["There is a red square."])
    with pytest.raises(EngineError) as err:
        _run(WorldTeacher(), messages=messages)
    assert err.value.status == 400


def test_skill_analysis_names_the_wrong_steps_skill_in_paraphrases() -> None:
    teacher = WorldTeacher()
    steps = ["The square is red.", "There are 2 red objects.", "The red square is in the left column.",
             "There is no blue circle.", "There are more red objects than blue objects."]
    for step in steps:
        phrases = set()
        for q in range(12):
            reply = _run(teacher, messages=build_skill_messages(f"question {q}", "yes", step)).text
            assert skill_of_phrase(reply) == parse_step(step).skill
            phrases.add(reply)
        assert len(phrases) >= 2  # several paraphrases, not one fixed name
    js = _run(teacher, messages=build_skill_messages("q", "2", steps[1]), response_format={"type": "json_object"}).text
    assert skill_of_phrase(parse_skill_reply(js)[0]) == "counting_by_color"


def test_annotation_names_the_true_skills() -> None:
    teacher = WorldTeacher()
    rows = generate_support_rows(0, 0, 60).to_pylist()
    for row in rows:
        msgs = build_annotation_messages(row["messages"][0]["content"], row["messages"][1]["content"])
        plain = parse_skill_reply(_run(teacher, messages=msgs).text)
        js = json.loads(_run(teacher, messages=msgs, response_format={"type": "json_object"}).text)["skills"]
        assert [skill_of_phrase(p) for p in plain] == true_skills(row)
        assert [skill_of_phrase(p) for p in js] == true_skills(row)


def test_step_verdicts(locate_rows: list[dict]) -> None:
    row = locate_rows[1]
    steps = json.loads(row["metadata"])["world"]["steps"]
    for step, expected in ((steps[1], "yes"), (_flip(steps[1]), "no")):
        text = f"Question: q\nCorrect answer: a\nPrevious steps:\nStep 1: {steps[0]}\nStep 2: {step}\nIs step 2 correct? Reply yes or no."
        assert _run(WorldTeacher(), messages=[{"role": "user", "content": text}], images=row["images"]).text == expected


def test_unknown_prompt_is_rejected() -> None:
    with pytest.raises(EngineError) as err:
        _run(WorldTeacher(), messages=[{"role": "user", "content": "Write a poem."}])
    assert err.value.status == 400


def test_replies_are_deterministic_and_seeded(locate_rows: list[dict]) -> None:
    msgs = build_skill_messages("q", "yes", "There is a red square.")
    replies = {_run(WorldTeacher(TeacherConfig(seed=s)), messages=msgs).text for s in range(12)}
    assert len(replies) >= 2
    a = _run(WorldTeacher(TeacherConfig(seed=3)), messages=msgs).text
    assert a == _run(WorldTeacher(TeacherConfig(seed=3)), messages=msgs).text


def _noisy(**noise: float) -> WorldTeacher:
    return WorldTeacher(TeacherConfig(noise=TeacherNoise(**noise)))


def test_noise_failed_and_malformed_and_wrong_skill() -> None:
    step = "There are 2 red objects."
    fails = 0
    for q in range(40):
        try:
            _run(_noisy(failed=0.5), messages=build_skill_messages(f"q{q}", "2", step))
        except EngineError as exc:
            assert exc.status == 503
            fails += 1
    assert 8 <= fails <= 32
    malformed = [_run(_noisy(malformed=1.0), messages=build_skill_messages(f"q{q}", "2", step)).text for q in range(10)]
    assert all(skill_of_phrase(m) is None for m in malformed)
    wrong = [skill_of_phrase(_run(_noisy(wrong_skill=1.0), messages=build_skill_messages(f"q{q}", "2", step)).text) for q in range(10)]
    assert all(w is not None and w != "counting_by_color" for w in wrong)
    assert all(skill_phrases(w) for w in wrong)


def test_noise_wrong_step_moves_the_shift(locate_rows: list[dict]) -> None:
    moved = 0
    for row in locate_rows:
        steps = json.loads(row["metadata"])["world"]["steps"]
        clean = _probs(WorldTeacher(), row, [steps[0]])
        noisy = _probs(_noisy(wrong_step=1.0), row, [steps[0]])
        moved += noisy["wrong"] > noisy["gold"] and clean["gold"] > clean["wrong"]
    assert moved >= 1


def test_noise_slow() -> None:
    started = time.perf_counter()
    _run(_noisy(slow=1.0, slow_seconds=0.2), messages=build_skill_messages("q", "2", "There are 2 red objects."))
    assert time.perf_counter() - started >= 0.2


def test_faults_are_drawn_per_attempt_so_retries_can_succeed() -> None:
    messages = build_skill_messages("q", "2", "There are 2 red objects.")
    teacher = _noisy(failed=0.5)
    outcomes = []
    for _ in range(12):
        try:
            _run(teacher, messages=messages)
            outcomes.append("ok")
        except EngineError:
            outcomes.append("failed")
    assert "ok" in outcomes and "failed" in outcomes

    sticky = WorldTeacher(TeacherConfig(noise=TeacherNoise(failed=0.5, per_attempt=False)))
    first = []
    for q in range(20):
        msgs = build_skill_messages(f"q{q}", "2", "There are 2 red objects.")
        runs = []
        for _ in range(3):
            try:
                _run(sticky, messages=msgs)
                runs.append("ok")
            except EngineError:
                runs.append("failed")
        assert len(set(runs)) == 1  # the same request fails (or succeeds) every time
        first.append(runs[0])
    assert "ok" in first and "failed" in first
