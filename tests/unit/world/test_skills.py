"""Skills and the closed step language: every step template parses back and checks against scenes."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from edray.world.config import SceneConfig
from edray.world.scene import COLORS, SHAPES, Scene, SceneObject
from edray.world.skills import (
    SKILL_NAMES,
    SKILLS,
    StepClaim,
    check_step,
    corpus_texts,
    final_answer,
    format_steps,
    make_subject,
    parse_step,
    render_step,
    skill_of_phrase,
    split_steps,
    split_words,
    vocabulary,
)
from edray.world.questions import KINDS

SCENE = Scene(
    32,
    2,
    (
        SceneObject("square", "red", "large", 0, 0),
        SceneObject("circle", "red", "small", 0, 1),
        SceneObject("triangle", "blue", "large", 1, 1),
    ),
)

# One true and one false claim per skill, checked by hand against SCENE.
CASES = [
    ("The square is red.", "color_recognition", True),
    ("The triangle is red.", "color_recognition", False),
    ("The blue object is a triangle.", "shape_recognition", True),
    ("The blue object is a circle.", "shape_recognition", False),
    ("The circle is small.", "size_recognition", True),
    ("The red square is small.", "size_recognition", False),
    ("There are 3 objects.", "object_counting", True),
    ("There are 2 objects.", "object_counting", False),
    ("There are 2 red objects.", "counting_by_color", True),
    ("There is 1 red object.", "counting_by_color", False),
    ("There is 1 triangle.", "counting_by_shape", True),
    ("There are 0 squares.", "counting_by_shape", False),
    ("The blue triangle is in the right column.", "horizontal_position", True),
    ("The square is in the right column.", "horizontal_position", False),
    ("The triangle is in the bottom row.", "vertical_position", True),
    ("The red circle is in the bottom row.", "vertical_position", False),
    ("There is no cross.", "shape_existence", True),
    ("There is a cross.", "shape_existence", False),
    ("There is a blue object.", "color_existence", True),
    ("There is an orange object.", "color_existence", False),
    ("There is no blue square.", "attribute_binding", True),
    ("There is a blue square.", "attribute_binding", False),
    ("There are more red objects than blue objects.", "count_comparison", True),
    ("There are as many squares as circles.", "count_comparison", True),
    ("There are fewer red objects than blue objects.", "count_comparison", False),
]


def test_at_least_ten_skills_each_with_distinct_paraphrases() -> None:
    assert len(SKILLS) >= 10
    seen: set[str] = set()
    for s in SKILLS:
        assert len(s.phrases) >= 3
        lowered = {p.lower() for p in s.phrases}
        assert not lowered & seen, f"{s.name} shares a phrase with another skill"
        seen |= lowered
        assert all(skill_of_phrase(p) == s.name for p in s.phrases)


@pytest.mark.parametrize("text,skill,truth", CASES)
def test_every_skill_step_parses_and_checks(text: str, skill: str, truth: bool) -> None:
    claim = parse_step(f"Step 2: {text}")
    assert claim is not None and claim.skill == skill
    assert check_step(claim, SCENE) is truth
    assert parse_step(render_step(claim)) == claim


def test_cases_cover_every_skill() -> None:
    assert {skill for _, skill, _ in CASES} == set(SKILL_NAMES)


@pytest.mark.parametrize("text", ["", "The image is nice.", "There are many objects.", "The red square is blue.",
                                  "There is a large square.", "The magenta square is red."])
def test_text_outside_the_step_language_is_none(text: str) -> None:
    assert parse_step(text) is None


def test_gold_steps_of_every_kind_hold_and_perturbed_values_fail() -> None:
    cfg = SceneConfig()
    rng = random.Random(3)
    for kind in KINDS.values():
        for _ in range(40):
            q = kind.generate(rng, cfg)
            for claim in q.steps:
                assert claim.skill in kind.skills
                parsed = parse_step(render_step(claim))
                assert parsed == claim and check_step(parsed, q.scene), (kind.name, render_step(claim))
                if claim.skill in ("color_recognition", "shape_recognition"):
                    pool = list(COLORS) if claim.skill == "color_recognition" else list(SHAPES)
                    wrong = replace(claim, value=next(v for v in pool if v != claim.value))
                    assert not check_step(wrong, q.scene)
                if claim.skill in ("shape_existence", "color_existence", "attribute_binding"):
                    assert not check_step(replace(claim, negated=not claim.negated), q.scene)


def test_attribute_claim_about_an_ambiguous_subject_needs_every_match() -> None:
    claim = StepClaim("color_recognition", make_subject(size="large"), "red")
    assert not check_step(claim, SCENE)  # the large triangle is blue
    assert check_step(StepClaim("color_recognition", make_subject(shape="circle"), "red"), SCENE)


def test_split_steps_and_final_answer() -> None:
    text = format_steps(["The square is red.", "There are 2 red objects."], "2")
    steps, answer = split_steps(text)
    assert steps == ["The square is red.", "There are 2 red objects."]
    assert answer == "2"
    assert split_steps("Step 1: The square is red. Step 2: There is a cross. Answer: yes")[0] == [
        "The square is red.", "There is a cross."]
    assert final_answer("Step 1: There is a cross.\nAnswer: Yes.") == "yes"
    assert final_answer("left") == "left"
    assert final_answer("Step 1: There is a cross. Answer: no\nAnswer: yes") == "yes"


def test_vocabulary_covers_the_corpus_and_is_small() -> None:
    vocab = vocabulary()
    assert len(vocab) == len(set(vocab)) and len(vocab) < 400
    assert "<image>" in vocab
    missing = set()
    for text in corpus_texts(3000, seed=5):
        missing |= set(split_words(text)) - set(vocab)
    assert not missing


def test_corpus_is_deterministic_and_mixes_prompts_and_steps() -> None:
    a = list(corpus_texts(200, seed=1))
    assert a == list(corpus_texts(200, seed=1))
    assert a != list(corpus_texts(200, seed=2))
    assert any("Step 1:" in t for t in a) and any("Step 1:" not in t for t in a)
