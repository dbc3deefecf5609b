"""The world's atomic skills and the closed language of reasoning steps.

Every reasoning step the world writes exercises exactly one skill and is one of a small closed set of
step templates, so a step can be parsed back (:func:`parse_step`) and checked against the scene
(:func:`check_step`). This is what lets the world measure step-location and skill accuracy of the
diagnose stage (docs/method.md section 1, steps 2 and 3).

Answers with steps read::

    Step 1: The square is red.
    Step 2: There are 2 red objects.
    Answer: 2

The student's tokenizer is word-level: :func:`vocabulary` lists every word any world text uses (split
by :func:`split_words`), and :func:`corpus_texts` yields representative prompts and answers.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from edray.world.scene import COLORS, SHAPE_PLURALS, SHAPES, SIZES, Scene, SceneObject, column_names, row_names


@dataclass(frozen=True)
class Skill:
    """An atomic skill: its id and the phrases a teacher may use for it (first is canonical)."""

    name: str
    phrases: tuple[str, ...]


SKILLS: tuple[Skill, ...] = (
    Skill("color_recognition", ("color recognition", "identifying colours", "naming the hue", "telling which colour an object has")),
    Skill("shape_recognition", ("shape recognition", "identifying shapes", "naming the geometric form", "telling which figure an object is")),
    Skill("size_recognition", ("size recognition", "judging how big an object is", "telling big items from small ones")),
    Skill("object_counting", ("object counting", "counting all items in the picture", "tallying how many things there are")),
    Skill("counting_by_color", ("counting objects of a given colour", "color-specific counting", "tallying items that share a hue")),
    Skill("counting_by_shape", ("counting objects of a given shape", "shape-specific counting", "tallying figures of one form")),
    Skill("horizontal_position", ("horizontal position", "telling left from right", "locating an object along the x axis")),
    Skill("vertical_position", ("vertical position", "telling top from bottom", "locating an object along the y axis")),
    Skill("shape_existence", ("shape existence", "detecting whether a kind of figure is present", "spotting a particular form")),
    Skill("color_existence", ("color existence", "detecting whether a hue is present", "spotting a particular colour")),
    Skill("attribute_binding", ("attribute binding", "matching colour to shape", "recognizing colour-shape combinations", "binding a hue to its figure")),
    Skill("count_comparison", ("count comparison", "comparing quantities", "deciding which group is larger")),
)
SKILL_NAMES: tuple[str, ...] = tuple(s.name for s in SKILLS)
_SKILL_BY_NAME = {s.name: s for s in SKILLS}


def skill_phrases(name: str) -> tuple[str, ...]:
    """The paraphrases of a skill (the first is canonical).

    Raises:
        KeyError: unknown skill.
    """
    return _SKILL_BY_NAME[name].phrases


def skill_of_phrase(phrase: str) -> str | None:
    """The skill a phrase names, by exact (case-insensitive) match on a known paraphrase; else ``None``."""
    p = phrase.strip().strip(".").lower()
    for s in SKILLS:
        if any(p == q.lower() for q in s.phrases) or p == s.name:
            return s.name
    return None


# --- step claims ----------------------------------------------------------------------------------

Subject = tuple[tuple[str, str], ...]
"""An object description as sorted (attribute, value) pairs, e.g. (("color", "red"), ("shape", "square")).
The empty subject means "the object" (all objects)."""


@dataclass(frozen=True)
class StepClaim:
    """What one reasoning step asserts about the scene.

    Attributes:
        skill: the one skill the step exercises.
        subject: which objects the claim is about (see :data:`Subject`); for counts and existence,
            the objects counted or looked for; for comparisons, the first group.
        value: the asserted value: a color, shape, size, column, row, a count ("2"), or for
            comparisons ``more``/``fewer``/``same``.
        negated: existence claims: ``True`` for "There is no ...".
        other: comparisons: the second group.
    """

    skill: str
    subject: Subject = ()
    value: str = ""
    negated: bool = False
    other: Subject = ()


def make_subject(**attrs: str | None) -> Subject:
    """A :data:`Subject` from keyword attributes (``None`` values are dropped)."""
    return tuple(sorted((k, v) for k, v in attrs.items() if v is not None))


def describe(subject: Subject) -> str:
    """Noun phrase for a subject: ``large red square``, ``red object``, ``square``, ``object``."""
    d = dict(subject)
    words = [w for w in (d.get("size"), d.get("color")) if w]
    words.append(d.get("shape") or "object")
    return " ".join(words)


def _group(subject: Subject) -> str:
    d = dict(subject)
    if "shape" in d:
        return SHAPE_PLURALS[d["shape"]] if "color" not in d else f"{d['color']} {SHAPE_PLURALS[d['shape']]}"
    return f"{d['color']} objects"


_A_BEFORE_VOWEL = re.compile(r"\b([Aa]) (?=[aeiou])")


def fix_articles(text: str) -> str:
    """``a orange`` -> ``an orange``."""
    return _A_BEFORE_VOWEL.sub(lambda m: m.group(1) + "n ", text)


def render_step(claim: StepClaim) -> str:
    """The step text for a claim (one of the closed templates).

    Raises:
        ValueError: the claim's skill has no step template.
    """
    return fix_articles(_render_step(claim))


def _render_step(claim: StepClaim) -> str:
    s, v = claim.skill, claim.value
    subj = describe(claim.subject)
    if s in ("color_recognition", "size_recognition"):
        return f"The {subj} is {v}."
    if s == "shape_recognition":
        return f"The {subj} is a {v}."
    if s == "horizontal_position":
        return f"The {subj} is in the {v} column."
    if s == "vertical_position":
        return f"The {subj} is in the {v} row."
    if s in ("object_counting", "counting_by_color", "counting_by_shape"):
        n = int(v)
        d = dict(claim.subject)
        if s == "counting_by_shape":
            noun = d["shape"] if n == 1 else SHAPE_PLURALS[d["shape"]]
        else:
            noun = ("object" if n == 1 else "objects") if s == "object_counting" else (
                f"{d['color']} object" if n == 1 else f"{d['color']} objects")
        return f"There {'is' if n == 1 else 'are'} {n} {noun}."
    if s in ("shape_existence", "color_existence", "attribute_binding"):
        return f"There is {'no' if claim.negated else 'a'} {subj}."
    if s == "count_comparison":
        a, b = _group(claim.subject), _group(claim.other)
        if v == "same":
            return f"There are as many {a} as {b}."
        return f"There are {v} {a} than {b}."
    raise ValueError(f"no step template for skill {s!r}")


_COLOR = "|".join(COLORS)
_SHAPE = "|".join(SHAPES)
_PLURAL = "|".join(SHAPE_PLURALS.values())
_SIZE = "|".join(SIZES)
_DESC = rf"(?:(?P<size>{_SIZE}) )?(?:(?P<color>{_COLOR}) )?(?P<noun>{_SHAPE}|object)"
_POS_WORDS = "left|center|right|top|middle|bottom"
_GROUP = rf"(?:(?:{_COLOR}) objects|(?:(?:{_COLOR}) )?(?:{_PLURAL}))"

_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(p, re.IGNORECASE))
    for name, p in (
        ("shape", rf"^the {_DESC} is an? (?P<value>{_SHAPE})$"),
        ("color", rf"^the {_DESC} is (?P<value>{_COLOR})$"),
        ("size", rf"^the {_DESC} is (?P<value>{_SIZE})$"),
        ("col", rf"^the {_DESC} is in the (?P<value>left|center|right) column$"),
        ("row", rf"^the {_DESC} is in the (?P<value>top|middle|bottom) row$"),
        ("count", rf"^there (?:is|are) (?P<value>\d+) (?:(?P<color>{_COLOR}) )?(?P<noun>objects?|{_SHAPE}|{_PLURAL})$"),
        ("exist", rf"^there is (?P<neg>a|an|no) {_DESC}$"),
        ("same", rf"^there are as many (?P<a>{_GROUP}) as (?P<b>{_GROUP})$"),
        ("cmp", rf"^there are (?P<value>more|fewer) (?P<a>{_GROUP}) than (?P<b>{_GROUP})$"),
    )
)
_PLURAL_TO_SHAPE = {v: k for k, v in SHAPE_PLURALS.items()}
_STEP_PREFIX = re.compile(r"^\s*step\s*\d+\s*[:.)]\s*", re.IGNORECASE)


def _subject_from(m: re.Match[str]) -> Subject:
    gd = m.groupdict()
    noun = gd.get("noun")
    shape = noun.lower() if noun and noun.lower() in SHAPES else None
    return make_subject(
        size=(gd.get("size") or "").lower() or None,
        color=(gd.get("color") or "").lower() or None,
        shape=shape,
    )


def _parse_group(text: str) -> Subject:
    words = text.lower().split()
    color = words[0] if words[0] in COLORS else None
    last = words[-1]
    shape = _PLURAL_TO_SHAPE.get(last)
    return make_subject(color=color, shape=shape)


def parse_step(text: str) -> StepClaim | None:
    """Parse one reasoning step (with or without its ``Step k:`` prefix) into a claim.

    Args:
        text: the step text, e.g. ``"Step 2: The red square is in the left column."``.

    Returns:
        The claim, or ``None`` when the text is not one of the world's step templates.
    """
    t = _STEP_PREFIX.sub("", text.strip())
    t = re.sub(r"\s+", " ", t).strip().rstrip(".").strip()
    if not t:
        return None
    for name, pat in _PATTERNS:
        m = pat.match(t)
        if not m:
            continue
        gd = m.groupdict()
        subj = _subject_from(m) if name not in ("same", "cmp") else ()
        if name == "shape":
            if dict(subj).get("shape"):
                return None
            return StepClaim("shape_recognition", subj, gd["value"].lower())
        if name == "color":
            if dict(subj).get("color"):
                return None
            return StepClaim("color_recognition", subj, gd["value"].lower())
        if name == "size":
            if dict(subj).get("size"):
                return None
            return StepClaim("size_recognition", subj, gd["value"].lower())
        if name == "col":
            return StepClaim("horizontal_position", subj, gd["value"].lower())
        if name == "row":
            return StepClaim("vertical_position", subj, gd["value"].lower())
        if name == "count":
            noun = gd["noun"].lower()
            color = (gd.get("color") or "").lower() or None
            if noun.startswith("object"):
                if color:
                    return StepClaim("counting_by_color", make_subject(color=color), str(int(gd["value"])))
                return StepClaim("object_counting", (), str(int(gd["value"])))
            if color:
                return None
            shape = noun if noun in SHAPES else _PLURAL_TO_SHAPE[noun]
            return StepClaim("counting_by_shape", make_subject(shape=shape), str(int(gd["value"])))
        if name == "exist":
            d = dict(subj)
            negated = gd["neg"].lower() == "no"
            if d.get("size"):
                return None
            if d.get("color") and d.get("shape"):
                return StepClaim("attribute_binding", subj, "", negated)
            if d.get("shape"):
                return StepClaim("shape_existence", subj, "", negated)
            if d.get("color"):
                return StepClaim("color_existence", subj, "", negated)
            return None
        if name in ("same", "cmp"):
            value = "same" if name == "same" else gd["value"].lower()
            return StepClaim("count_comparison", _parse_group(gd["a"]), value, other=_parse_group(gd["b"]))
    return None


def matching(scene: Scene, subject: Subject) -> list[SceneObject]:
    """Objects of the scene that fit a subject."""
    d = dict(subject)
    return [o for o in scene.objects if all(getattr(o, k) == v for k, v in d.items())]


def check_step(claim: StepClaim, scene: Scene) -> bool:
    """Whether a claim holds in the scene.

    Attribute and position claims hold when at least one object fits the subject and every object
    that fits has the value ("The square is red" is false if one of two squares is blue).

    Args:
        claim: a parsed step.
        scene: the ground-truth scene.

    Returns:
        ``True`` when the step is correct.
    """
    objs = matching(scene, claim.subject)
    s, v = claim.skill, claim.value
    if s in ("color_recognition", "shape_recognition", "size_recognition"):
        attr = {"color_recognition": "color", "shape_recognition": "shape", "size_recognition": "size"}[s]
        return bool(objs) and all(getattr(o, attr) == v for o in objs)
    if s == "horizontal_position":
        return bool(objs) and all(scene.column_of(o) == v for o in objs)
    if s == "vertical_position":
        return bool(objs) and all(scene.row_of(o) == v for o in objs)
    if s in ("object_counting", "counting_by_color", "counting_by_shape"):
        return v.isdigit() and len(objs) == int(v)
    if s in ("shape_existence", "color_existence", "attribute_binding"):
        return bool(objs) != claim.negated
    if s == "count_comparison":
        a, b = len(objs), len(matching(scene, claim.other))
        return {"more": a > b, "fewer": a < b, "same": a == b}.get(v, False)
    return False


# --- answers with steps ---------------------------------------------------------------------------

_STEP_SPLIT = re.compile(r"step\s*(\d+)\s*[:.)]\s*(.*?)(?=step\s*\d+\s*[:.)]|answer\s*:|$)", re.IGNORECASE | re.DOTALL)
_ANSWER = re.compile(r"answer\s*:", re.IGNORECASE)


def format_steps(steps: Sequence[str], answer: str) -> str:
    """``Step 1: ...`` lines followed by ``Answer: ...``."""
    lines = [f"Step {i}: {s}" for i, s in enumerate(steps, 1)]
    lines.append(f"Answer: {answer}")
    return "\n".join(lines)


def split_steps(text: str) -> tuple[list[str], str | None]:
    """Split an answer into its step texts (prefix removed) and its final answer.

    Returns:
        ``(steps, answer)``; ``answer`` is ``None`` when the text has no ``Answer:``.
    """
    last = None
    for last in _ANSWER.finditer(text):
        pass
    body = text[: last.start()] if last else text
    steps = [m.group(2).strip() for m in _STEP_SPLIT.finditer(body) if m.group(2).strip()]
    answer = text[last.end() :].strip() if last else None
    return steps, answer


def final_answer(text: str) -> str:
    """The final answer of a reply: what follows the last ``Answer:``, else the whole text, stripped,
    lower-cased, without a trailing period."""
    _, ans = split_steps(text)
    out = ans if ans is not None else text
    return out.strip().strip(".").strip().lower()


# --- vocabulary and corpus ------------------------------------------------------------------------

IMAGE_TOKEN = "<image>"
_WORD = re.compile(r"<image>|\w+|[^\w\s]+")


def split_words(text: str) -> list[str]:
    """Split text the way the student's word-level tokenizer does: ``<image>``, runs of word
    characters, runs of punctuation (the same split as ``tokenizers``' ``Whitespace`` pre-tokenizer)."""
    return _WORD.findall(text)


def _value_words(grid_sizes: Sequence[int] = (2, 3, 4)) -> set[str]:
    words: set[str] = set(COLORS) | set(SHAPES) | set(SHAPE_PLURALS.values()) | set(SIZES)
    for g in grid_sizes:
        words |= set(column_names(g)) | set(row_names(g))
    words |= {str(i) for i in range(10)} | {"yes", "no", "object", "objects", "A", "B", "C", "D", "E", "F"}
    return words


def vocabulary() -> list[str]:
    """Every word any world text can contain (prompts, answers, steps), sorted.

    Returns:
        Words as :func:`split_words` splits them, including ``<image>`` and punctuation.
    """
    from edray.world import tasks  # tasks build on the step language defined here

    words = _value_words()
    texts = list(tasks.template_texts())
    texts += [
        "Step 1: The red square is a square.",
        "The large red square is in the left column.",
        "The object is in the top row.",
        "There is 1 object. There are 2 objects. There is a red object. There is no square.",
        "There are more red objects than blue objects. There are fewer squares than circles.",
        "There are as many red objects as squares. Answer: yes. There is an orange object.",
    ]
    for t in texts:
        words.update(split_words(t))
    words.add(IMAGE_TOKEN)
    return sorted(words)


def corpus_texts(n: int, seed: int = 0) -> Iterator[str]:
    """Representative world texts for tokenizer training: prompt and answer of supporting samples,
    validation questions of every target task, and general-suite questions (no images rendered).

    Args:
        n: how many texts to yield.
        seed: corpus seed.

    Yields:
        ``"<prompt>\\n<answer>"`` strings.
    """
    from edray.world import tasks
    from edray.world.config import SceneConfig

    cfg = SceneConfig()
    rng = random.Random(f"corpus:{seed}")
    targets = tasks.target_task_names()
    for i in range(n):
        r = random.Random(f"corpus:{seed}:{i}")
        kind = rng.random()
        if kind < 0.8:
            sample = tasks.make_support_sample(r, tasks.SOURCE_TASKS[i % len(tasks.SOURCE_TASKS)], cfg)
        else:
            sample = tasks.make_eval_sample(r, targets[i % len(targets)], cfg, form="auto")
        yield f"{sample.prompt}\n{sample.response}"
