"""Prompts, step parsing, skill parsing and skill clustering."""

from __future__ import annotations

import numpy as np
import pytest

from edray.diagnose.core import (
    build_gaps,
    cluster_skills,
    parse_skill,
    parse_steps,
    question_text,
    render_locate_prompt,
    render_skill_prompt,
    render_student_prompt,
    strip_images,
)
from edray.diagnose.locate import build_options


@pytest.mark.parametrize(
    "text,steps,answer",
    [
        ("Step 1: look.\nStep 2: it is red.\nAnswer: B", ["look.", "it is red."], "B"),
        ("Step 1. look\n   Step 2.    count three  \nFinal answer: 3", ["look", "count three"], "3"),
        ("step 1) a step 2) b answer: yes", ["a", "b"], "yes"),
        ("**Step 1:** foo\n**Step 2:** bar\n**Answer:** C", ["foo", "bar"], "C"),
        ("1. first thing\n2. second thing\nAnswer: red", ["first thing", "second thing"], "red"),
        ("Step 1: the value is 3.5 units.\nStep 2: done\nThe answer is 4.", ["the value is 3.5 units.", "done"], "4"),
        ("Step 1: a\nStep 2:\n continued on\n two lines\nAnswer: x", ["a", "continued on two lines"], "x"),
    ],
)
def test_parse_steps(text: str, steps: list[str], answer: str) -> None:
    assert parse_steps(text) == (steps, answer)


def test_parse_steps_without_answer_line() -> None:
    # The last line that is not a step is the answer.
    assert parse_steps("1. look\n2. count\nso 3 objects") == (["look", "count"], "so 3 objects")
    # Only steps: the last step doubles as the answer.
    steps, answer = parse_steps("Step 1: look\nStep 2: it is blue")
    assert steps == ["look", "it is blue"] and answer == "it is blue"


def test_parse_steps_degenerate() -> None:
    assert parse_steps("") == ([], "")
    assert parse_steps(None) == ([], "")
    assert parse_steps("Answer: 3") == ([], "3")
    assert parse_steps("B") == (["B"], "B")
    assert parse_steps("Step 1: x\nAnswer:") == (["x"], "")


def test_question_and_prompts() -> None:
    msgs = [{"role": "user", "content": "<image>\nWhat colour is the square?"}]
    q = question_text(msgs)
    assert q.startswith("<image>") and strip_images(q) == "What colour is the square?"
    prompt = render_student_prompt("{question}\n{options}\nThink.", "Q?", ["red", "blue"])
    assert "A. red\nB. blue" in prompt
    assert render_student_prompt("{question}\n{options}\n\nThink.", "Q?", None) == "Q?\n\nThink."


def test_locate_prompt_states_the_gold_prior() -> None:
    opts = build_options("blue", "red", "multiple_choice", ["red", "blue"], key="k")
    text = render_locate_prompt("{question}|{options}|{prior}|{steps}|{letters}", "Q {x}?", opts, ["s1", "s2"], 0.6)
    assert text == "Q {x}?|A. red\nB. blue|option B has a 60% chance of being right.|Step 1: s1\nStep 2: s2|A, B"
    assert "65.5%" in render_locate_prompt("{prior}", "Q", opts, [], 0.655)


def test_default_prompts_follow_the_documented_wording() -> None:
    # The skills world's teacher reads the documented wording back; the defaults must match it.
    from edray.diagnose.config import DiagnoseConfig
    from edray.world.teacher_prompts import (
        build_answer_switch_messages,
        parse_answer_switch_prompt,
        parse_skill_prompt,
    )

    cfg = DiagnoseConfig(validation="unused")
    opts = build_options("B", "A", "multiple_choice", ["left", "right"], key="k")
    for steps in ([], ["There is a red square.", "The red square is in the left column."]):
        text = render_locate_prompt(cfg.locate.template, "Where is it?", opts, steps, 0.6, cfg.locate.prior_template)
        parsed = parse_answer_switch_prompt(text)
        assert parsed is not None
        assert (parsed.question, parsed.options, parsed.hint_letter, parsed.steps) == (
            "Where is it?", ("left", "right"), "B", tuple(steps)
        )
        reference = build_answer_switch_messages("Where is it?", ["left", "right"], "B", 0.6, steps, with_image=False)
        assert text == reference[1]["content"]
        assert cfg.locate.system == reference[0]["content"]
    system, user = render_skill_prompt(
        cfg.skill.system, cfg.skill.template, cfg.skill.example_template, cfg.skill.examples,
        "<image>\nWhere is\nit?", "left", "The square is on the right.",
    )
    parsed = parse_skill_prompt(user)
    assert parsed is not None and parsed.question == "Where is it?" and parsed.correct_answer == "left"
    assert "Skill: counting objects" in system


def test_skill_prompt_and_parse() -> None:
    examples = [{"question": "q1", "gold": "g1", "step": "s1", "skill": "counting"}]
    system, user = render_skill_prompt(
        "Shots:\n{examples}", "{question}/{gold}/{step}", "{question}:{skill}", examples, "Q\nR", "G", "S"
    )
    assert system == "Shots:\nq1:counting" and user == "Q R/G/S"
    assert parse_skill("Skill: counting objects.", 8) == "counting objects"
    assert parse_skill('"spatial reasoning"\nmore text', 8) == "spatial reasoning"
    assert parse_skill("Sure.\nMissing skill: colour binding", 8) == "colour binding"
    assert parse_skill('{"skill": "telling left from right"}', 8) == "telling left from right"
    assert parse_skill('{"skills": []}', 8) is None
    assert parse_skill("{not json", 8) is None  # broken JSON is malformed output: re-asked, then recorded
    assert parse_skill("counting small red objects in rows", 3) == "counting small red"
    # Sentences about the student keep their skill phrase, or count as no phrase.
    assert parse_skill("The student is missing the skill of identifying colours.", 8) == "identifying colours"
    assert parse_skill("The student answered wrong because he cannot count.", 8) is None
    assert parse_skill("Step", 8) is None
    assert parse_skill("   \n ", 5) is None
    assert parse_skill(None, 5) is None


def test_cluster_skills_threshold() -> None:
    x = np.array([[1, 0, 0], [0.99, 0.1, 0], [0, 1, 0], [0, 0.98, 0.05], [1, 0.02, 0], [0, 0, 1]], dtype=float)
    labels = cluster_skills(x, threshold=0.1)
    # Three groups; the largest ({0, 1, 4}) is gap 0, then {2, 3}, then {5}.
    assert labels.tolist() == [0, 0, 1, 1, 0, 2]
    assert len(set(cluster_skills(x, threshold=1.5).tolist())) == 1
    assert len(set(cluster_skills(x, threshold=0.0).tolist())) == 6


def test_cluster_skills_edge_cases() -> None:
    assert cluster_skills(np.zeros((0, 3)), 0.3).tolist() == []
    assert cluster_skills(np.ones((1, 3)), 0.3).tolist() == [0]
    # A zero vector never joins a cluster at a threshold below 2.
    labels = cluster_skills(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]), 0.5)
    assert labels[0] == labels[1] != labels[2]
    with pytest.raises(ValueError):
        cluster_skills(np.ones(3), 0.3)


def test_build_gaps() -> None:
    x = np.array([[1, 0], [1, 0.01], [1, 0.02], [0, 1]], dtype=float)
    phrases = ["counting", "counting objects", "counting", "colour binding"]
    labels = cluster_skills(x, threshold=0.1)
    gaps = build_gaps(["e1", "e2", "e3", "e4"], phrases, x, labels)
    assert [(g.gap_id, g.skill, g.error_count) for g in gaps] == [(0, "counting", 3), (1, "colour binding", 1)]
    assert sorted(gaps[0].error_ids) == ["e1", "e2", "e3"]
    assert gaps[0].phrases == ["counting", "counting objects"]


def test_verdict_prompt() -> None:
    from edray.diagnose.config import DiagnoseConfig
    from edray.diagnose.core import render_verdict_prompt
    from edray.world.teacher_prompts import parse_verdict_prompt

    cfg = DiagnoseConfig(validation="unused")
    text = render_verdict_prompt(cfg.locate.verdict_template, "Q?", "left", ["a", "b\nc"])
    assert text.endswith("Step 1: a\nStep 2: b c\nIs step 2 correct? Reply yes or no.")
    parsed = parse_verdict_prompt(text)
    assert parsed is not None and parsed.steps == ("a", "b c")
    assert render_verdict_prompt("{previous}|{step}|{step_index}", "Q", "g", ["x"]) == "(none)|x|1"


def test_parse_skill_rejects_non_phrases() -> None:
    from edray.diagnose.config import SkillConfig

    reject = SkillConfig().reject
    for reply in ("I am not sure.", "The image shows several things", "?", '{"skill": ', "Which one?"):
        assert parse_skill(reply, 8, reject) is None, reply
    assert parse_skill("telling left from right", 8, reject) == "telling left from right"
    assert parse_skill("Skill: identifying shapes.", 8, reject) == "identifying shapes"
