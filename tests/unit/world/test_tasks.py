"""Source tasks, target tasks and the general suite."""

from __future__ import annotations

import random
import string

from edray.world.config import SceneConfig
from edray.world.skills import SKILL_NAMES, check_step, parse_step, split_steps
from edray.world.questions import KINDS
from edray.world.tasks import (
    GENERAL_SUITE,
    SOURCE_TASK_BY_NAME,
    SOURCE_TASKS,
    STEP_TRIGGER,
    TARGET_TASK_BY_NAME,
    TARGET_TASKS,
    identify_task,
    make_eval_sample,
    make_support_sample,
)


# Target-only kinds and the source kind that teaches their chain and answer format.
_TAUGHT_BY = {"lone_colour_corner": "colour_corner"}


def _literal(template: str) -> str:
    return " ".join(lit for lit, _, _, _ in string.Formatter().parse(template)).lower()


def test_source_tasks_cover_the_skills_with_distinct_wordings() -> None:
    assert len(SOURCE_TASKS) >= 60
    assert len({t.template for t in SOURCE_TASKS}) == len(SOURCE_TASKS)
    assert all(1 <= len(t.skills) <= 2 and set(t.skills) <= set(SKILL_NAMES) for t in SOURCE_TASKS)
    assert {s for t in SOURCE_TASKS for s in t.skills} == set(SKILL_NAMES)
    styles = {t.style for t in SOURCE_TASKS}
    assert styles == {"brief", "steps"}


def test_every_kind_declares_known_skills() -> None:
    for kind in KINDS.values():
        assert kind.skills and set(kind.skills) <= set(SKILL_NAMES)


def test_target_tasks_combine_skills_and_are_phrased_unlike_source_tasks() -> None:
    assert len(TARGET_TASKS) >= 5
    source_literals = {_literal(t.template) for t in SOURCE_TASKS}
    for t in TARGET_TASKS:
        assert len(t.skills) >= 2
        assert _literal(t.template) not in source_literals
        # No source wording is a prefix of a target wording either.
        assert all(not _literal(t.template).startswith(s) for s in source_literals)


def test_support_samples_answer_in_their_task_style() -> None:
    cfg = SceneConfig()
    for t in SOURCE_TASKS:
        s = make_support_sample(random.Random(t.name), t, cfg)
        steps, answer = split_steps(s.response)
        if t.style == "steps":
            assert steps and answer == s.answer
            assert all(check_step(parse_step(x), s.question.scene) for x in steps)
        else:
            assert not steps and s.response == s.answer


def test_eval_samples_reason_in_steps_and_multiple_choice_answers_are_letters() -> None:
    cfg = SceneConfig()
    forms_seen = set()
    for t in [t.name for t in TARGET_TASKS] + [GENERAL_SUITE]:
        for i in range(20):
            s = make_eval_sample(random.Random(f"{t}{i}"), t, cfg)
            forms_seen.add(s.answer_type)
            steps, answer = split_steps(s.response)
            assert steps and answer == s.answer
            if s.answer_type == "multiple_choice":
                assert s.choices[ord(s.answer) - 65] == s.question.answer
                assert "Options: A." in s.prompt
        s = make_eval_sample(random.Random(f"{t}mc"), t, cfg, form="multiple_choice")
        assert s.answer_type == "multiple_choice" and s.choices[ord(s.answer) - 65] == s.question.answer
        assert "Options: A." in s.prompt
    assert forms_seen == {"yes_no", "number", "open"}


def test_every_target_and_source_asks_for_steps_with_one_trigger() -> None:
    assert all(t.template.endswith(STEP_TRIGGER) for t in TARGET_TASKS)
    assert all(t.template.endswith(STEP_TRIGGER) for t in SOURCE_TASKS if t.style == "steps")
    source_sentences = {t.template for t in SOURCE_TASKS}
    assert not {t.template for t in TARGET_TASKS} & source_sentences  # unseen question sentences
    # every target chain is taught by a source task of the same kind (or the kind it stands in for), worded differently
    assert {_TAUGHT_BY.get(t.kind, t.kind) for t in TARGET_TASKS} <= {t.kind for t in SOURCE_TASKS}
    # colour_corner's kind draws one object; the pool's colour_corner rows keep several
    assert TARGET_TASK_BY_NAME["colour_corner"].skills == SOURCE_TASK_BY_NAME["colour_corner_2"].skills
    lone = [make_eval_sample(random.Random(i), "colour_corner", SceneConfig()).question.scene for i in range(50)]
    assert all(len(scene.objects) == 1 for scene in lone)


def test_blind_gap_steps_are_fluent_random_and_the_answer_follows_them() -> None:
    """The generic student's pretraining rows: gap steps parse, hold about half the time, and the answer
    is what the written steps imply; the other steps stay correct."""
    cfg = SceneConfig()
    gaps = ("vertical_position", "attribute_binding", "count_comparison")
    held = {g: [] for g in gaps}
    for t in SOURCE_TASKS:
        if t.style != "steps" or not set(t.skills) & set(gaps):
            continue
        for i in range(60):
            s = make_support_sample(random.Random(f"{t.name}:{i}"), t, cfg, blind_skills=gaps)
            steps, answer = split_steps(s.response)
            claims = [parse_step(x) for x in steps]
            assert all(c is not None for c in claims), s.response
            assert answer == KINDS[t.kind].answer_of(claims)
            after_wrong_gap = False  # a step about an item a wrong gap step invented cannot hold
            for c in claims:
                ok = check_step(c, s.question.scene)
                if c.skill in gaps:
                    held[c.skill].append(ok)
                    after_wrong_gap |= not ok
                else:
                    assert ok or after_wrong_gap, s.response
    for g, oks in held.items():
        assert len(oks) > 100 and 0.25 < sum(oks) / len(oks) < 0.75, (g, sum(oks) / len(oks))


def test_identify_task_recognizes_every_wording() -> None:
    cfg = SceneConfig()
    for t in SOURCE_TASKS:
        for i in range(5):
            s = make_support_sample(random.Random(f"{t.name}{i}"), t, cfg)
            assert identify_task(f"<image>\n{s.prompt}") == t.name
    for t in TARGET_TASKS:
        for form in ("open", "multiple_choice"):
            s = make_eval_sample(random.Random(t.name), t.name, cfg, form=form)
            assert identify_task(s.prompt) == t.name
    assert identify_task("What is the capital of France?") is None


def test_target_wordings_read_closest_to_their_own_kind_and_use_trained_words() -> None:
    """A target worded one word away from a one-step source task (``In which row of the picture does the
    ... sit?`` against ``In which corner of the picture does the ... sit?``) let some pretrainings answer
    the target with that task's single step. Every target's nearest source wording must be of its own kind,
    and every word of a target's question must occur in the source prompts (else its embedding never
    trains)."""
    import difflib

    from edray.world.skills import split_words

    def words(template: str) -> list[str]:
        return split_words(template.lower())

    for t in TARGET_TASKS:
        nearest = max(SOURCE_TASKS, key=lambda s: difflib.SequenceMatcher(None, words(t.template), words(s.template)).ratio())
        assert nearest.kind == _TAUGHT_BY.get(t.kind, t.kind), (t.name, nearest.name)
    cfg = SceneConfig()
    seen: set[str] = set()
    for i in range(20 * len(SOURCE_TASKS)):
        seen.update(split_words(make_support_sample(random.Random(i), SOURCE_TASKS[i % len(SOURCE_TASKS)], cfg).prompt))
    for t in TARGET_TASKS:
        asked = set()
        for i in range(40):
            asked.update(split_words(make_eval_sample(random.Random(i), t.name, cfg, form="auto").prompt))
        assert not asked - seen, (t.name, sorted(asked - seen))
