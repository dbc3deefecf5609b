"""The source tasks of the supporting pool, the target tasks and the general suite, and their samples.

A *source task* is a question kind (:mod:`edray.world.questions`) with its own instruction wording and
answer style (brief or with steps), like the expert-written tasks of Vision-Flan. A *target task*
combines skills and is phrased unlike any source task; its rows are what the pipeline diagnoses and
evaluates. Everything here is pure: randomness comes from the caller's ``random.Random``.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from edray.world.config import SceneConfig
from edray.world.questions import KINDS, Question, blind
from edray.world.scene import COLORS, SHAPE_PLURALS, SHAPES, column_names
from edray.world.skills import fix_articles, format_steps, render_step


STEP_TRIGGER = "Work it out in steps."
"""The one instruction that asks for numbered steps, shared by every task answered with steps (source and
target), so the student already speaks the target's format."""

# --- source tasks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceTask:
    """A supporting-pool task: a question kind with its own wording and answer style.

    Attributes:
        name: task id (the pool's ``source_task`` column).
        kind: question kind name.
        template: the instruction with ``{slot}`` fields.
        style: ``brief`` (answer only) or ``steps`` (numbered steps, then ``Answer:``).
    """

    name: str
    kind: str
    template: str
    style: str

    @property
    def skills(self) -> tuple[str, ...]:
        return KINDS[self.kind].skills


_SOURCE_WORDINGS: dict[str, list[tuple[str, str]]] = {
    "color_name": [
        ("What color is the {target}?", "brief"),
        ("Name the colour of the {target}. Use one word.", "brief"),
        ("Which colour does the {target} have? {TRIGGER}", "steps"),
        ("Tell me the hue of the {target}. {TRIGGER}", "steps"),
        ("Identify the color of the {target} in the picture.", "brief"),
    ],
    "shape_name": [
        ("What shape is the {target}?", "brief"),
        ("Name the shape of the {target}. Use one word.", "brief"),
        ("Which figure is the {target}? {TRIGGER}", "steps"),
        ("Tell me what form the {target} has. {TRIGGER}", "steps"),
        ("Identify the geometric shape of the {target}.", "brief"),
    ],
    "size_name": [
        ("Is the {target} small or large?", "brief"),
        ("Tell me the size of the {target}: small or large.", "brief"),
        ("How big is the {target}? {TRIGGER}", "steps"),
        ("Judge whether the {target} is large or small. {TRIGGER}", "steps"),
        ("What size is the {target}?", "brief"),
    ],
    "count_all": [
        ("How many objects are in the image?", "brief"),
        ("Count the objects in the picture.", "brief"),
        ("How many shapes can you see? {TRIGGER}", "steps"),
        ("Give the number of items in the image. {TRIGGER}", "steps"),
        ("What is the total number of objects shown?", "brief"),
    ],
    "count_color": [
        ("How many {color} objects are there?", "brief"),
        ("Count the {color} objects in the picture.", "brief"),
        ("How many objects are {color}? {TRIGGER}", "steps"),
        ("Give the number of {color} items. {TRIGGER}", "steps"),
        ("What is the number of {color} shapes in the image?", "brief"),
    ],
    "count_shape": [
        ("How many {shapes} are there?", "brief"),
        ("Count the {shapes} in the picture.", "brief"),
        ("How many {shapes} can you see? {TRIGGER}", "steps"),
        ("Give the number of {shapes}. {TRIGGER}", "steps"),
        ("What is the number of {shapes} in the image?", "brief"),
    ],
    "position_h": [
        ("Is the {target} on the left or on the right?", "brief"),
        ("In which column is the {target}: left or right?", "brief"),
        ("Which side of the image is the {target} on? {TRIGGER}", "steps"),
        ("Say whether the {target} is left or right. {TRIGGER}", "steps"),
        ("Where is the {target} horizontally?", "brief"),
        ("Where does the {target} sit: left or right? {TRIGGER}", "steps"),
        ("Name the side of the image that holds the {target}. {TRIGGER}", "steps"),
    ],
    "position_v": [
        ("Is the {target} at the top or at the bottom?", "brief"),
        ("In which row is the {target}: top or bottom?", "brief"),
        ("Which half of the image holds the {target}, top or bottom? {TRIGGER}", "steps"),
        ("Say whether the {target} is up or down. {TRIGGER}", "steps"),
        ("Where is the {target} vertically?", "brief"),
        ("Where does the {target} sit: top or bottom? {TRIGGER}", "steps"),
        ("Name the half of the image that holds the {target}, top or bottom. {TRIGGER}", "steps"),
    ],
    "exist_shape": [
        ("Is there a {shape} in the image?", "brief"),
        ("Does the picture contain a {shape}? Answer yes or no.", "brief"),
        ("Can a {shape} be seen here? {TRIGGER}", "steps"),
        ("Find out whether any {shape} is present. {TRIGGER}", "steps"),
        ("Is any {shape} shown?", "brief"),
    ],
    "exist_color": [
        ("Is there a {color} object in the image?", "brief"),
        ("Does the picture contain anything {color}? Answer yes or no.", "brief"),
        ("Can a {color} item be seen here? {TRIGGER}", "steps"),
        ("Check whether a {color} object is anywhere in the image. {TRIGGER}", "steps"),
        ("Is any {color} shape shown?", "brief"),
    ],
    "binding": [
        ("Is there a {color} {shape}?", "brief"),
        ("Does the picture contain a {color} {shape}? Answer yes or no.", "brief"),
        ("Does the image hold a {color} {shape}? {TRIGGER}", "steps"),
        ("Check whether a {shape} that is {color} is present. {TRIGGER}", "steps"),
        ("Is any {shape} in the image {color}?", "brief"),
    ],
    "compare_color": [
        ("Are there more {group_a} than {group_b}?", "brief"),
        ("Compare the counts: are {group_a} more numerous than {group_b}? {TRIGGER}", "steps"),
        ("Do {color_a} items outnumber {color_b} items? {TRIGGER}", "steps"),
    ],
    "compare_shape": [
        ("Are there more {shapes_a} than {shapes_b} in the image?", "brief"),
        ("Compare the numbers: are {shapes_a} more frequent than {shapes_b}? {TRIGGER}", "steps"),
        ("Is the number of {shapes_a} greater than the number of {shapes_b}? {TRIGGER}", "steps"),
    ],
    "color_in_column": [
        ("What color is the object in the {column} column?", "brief"),
        ("Name the colour of the shape on the {column} side. {TRIGGER}", "steps"),
    ],
    "shape_of_large": [
        ("What shape is the large object?", "brief"),
        ("Name the kind of figure the biggest item is. {TRIGGER}", "steps"),
        ("Which shape is the large one? {TRIGGER}", "steps"),
    ],
    "relation": [
        ("Are there more, fewer or as many {color_a} objects as {color_b} objects?", "brief"),
        ("Compare the {color_a} objects with the {color_b} objects: more, fewer or the same? {TRIGGER}", "steps"),
        ("Compared with the {color_b} objects, are the {color_a} things more, fewer or as many? {TRIGGER}", "steps"),
    ],
    "spot_item": [
        ("Is there a {shape}, and is one of them {color}?", "brief"),
        ("Look closely: can you spot a {shape} here, and is one of them {color}? {TRIGGER}", "steps"),
        ("Look closely for a {shape}, then spot one that is {color}, if any. {TRIGGER}", "steps"),
    ],
    "locate_item": [
        ("Where is the {color} {shape}: left, right or nowhere?", "brief"),
        ("On which side is the {color} {shape}, if it is there at all? {TRIGGER}", "steps"),
        ("Look for the {color} {shape} and say on which side it is, if it is there. {TRIGGER}", "steps"),
    ],
    "corner": [
        ("Which corner holds the {color} {shape}?", "brief"),
        ("Which corner holds the {color} {shape}? {TRIGGER}", "steps"),
        ("In which corner of the image is the {color} {shape}? {TRIGGER}", "steps"),
        ("Say which corner of the picture the {color} {shape} sits in. {TRIGGER}", "steps"),
        ("Which corner of the image is the {color} {shape} in? {TRIGGER}", "steps"),
        ("Name the corner that holds the {color} {shape}. {TRIGGER}", "steps"),
        ("Where is the {color} {shape}: in which corner? {TRIGGER}", "steps"),
    ],
    "colour_corner": [
        ("Which corner is the {color} object in?", "brief"),
        ("Which corner is the {color} object in? {TRIGGER}", "steps"),
        ("Say which corner the {color} thing is in. {TRIGGER}", "steps"),
        ("Tell me which corner of the image the {color} object is in. {TRIGGER}", "steps"),
        ("Say where the {color} item lies: in which corner? {TRIGGER}", "steps"),
        ("Name the corner that holds the {color} item. {TRIGGER}", "steps"),
    ],
    "same_color_count": [
        ("Count the objects with the same colour as the {shape}.", "brief"),
        ("Count the objects with the same colour as the {shape}. {TRIGGER}", "steps"),
        ("How many objects share a colour with the {shape}? {TRIGGER}", "steps"),
    ],
}


def _build_source_tasks() -> tuple[SourceTask, ...]:
    out: list[SourceTask] = []
    for kind, wordings in _SOURCE_WORDINGS.items():
        for i, (template, style) in enumerate(wordings):
            out.append(SourceTask(f"{kind}_{i + 1}", kind, template.replace("{TRIGGER}", STEP_TRIGGER), style))
    return tuple(out)


SOURCE_TASKS: tuple[SourceTask, ...] = _build_source_tasks()
SOURCE_TASK_BY_NAME: dict[str, SourceTask] = {t.name: t for t in SOURCE_TASKS}


# --- target tasks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetTask:
    """A composite evaluation task: a kind, a wording unlike any source task, its answer forms.

    Attributes:
        name: task id.
        kind: question kind name.
        template: the question with ``{slot}`` fields; the answer is always asked with steps.
        forms: answer types rows may take (``multiple_choice`` or the kind's own type); ``auto``
            generation picks among them per row.
        description: what the task tests, for docs and reports.
    """

    name: str
    kind: str
    template: str
    forms: tuple[str, ...]
    description: str

    @property
    def skills(self) -> tuple[str, ...]:
        return KINDS[self.kind].skills


TARGET_TASKS: tuple[TargetTask, ...] = (
    TargetTask("corner", "corner",
               "In which corner of the picture does the {color} {shape} sit? " + STEP_TRIGGER,
               ("open",), "vertical position (a gap, step 1), then horizontal position of one object"),
    TargetTask("colour_corner", "lone_colour_corner",
               "Tell me the corner where the {color} thing is. " + STEP_TRIGGER,
               ("open",), "horizontal position, then vertical position (a gap, step 2) of the one object, named by its colour"),
    TargetTask("locate_item", "locate_item",
               "Find the {color} {shape}. On which side of the picture does it sit, if anywhere? " + STEP_TRIGGER,
               ("open",), "attribute binding (a gap, step 1), then horizontal position of the found object"),
    TargetTask("spot_item", "spot_item",
               "Look closely: can you spot a {shape} here, and is any of them {color}? " + STEP_TRIGGER,
               ("yes_no",), "shape existence, then attribute binding (a gap, step 2)"),
    TargetTask("outnumber", "relation",
               "Compare the {color_a} things with the {color_b} things: more, fewer or the same? " + STEP_TRIGGER,
               ("open",), "count two colours, then compare the counts (a gap, step 3)"),
    TargetTask("same_colour_count", "same_color_count",
               "Count the things with the same colour as the {shape}. " + STEP_TRIGGER,
               ("number",), "control without a gap: colour of a shape, then count that colour"),
    TargetTask("big_one_shape", "shape_of_large",
               "Which kind of figure is the big one? " + STEP_TRIGGER,
               ("open",), "control without a gap: find the one large object, then name its shape"),
)
TARGET_TASK_BY_NAME: dict[str, TargetTask] = {t.name: t for t in TARGET_TASKS}
GENERAL_SUITE = "general"
OPTION_LETTERS = string.ascii_uppercase
MC_INSTRUCTION = "Answer with the letter of the right option."


def target_task_names() -> list[str]:
    """Names of the target tasks, in definition order."""
    return [t.name for t in TARGET_TASKS]


# --- samples --------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One generated sample before rendering.

    Attributes:
        task: source or target task name (``general`` rows keep their source task here).
        question: the solved question.
        prompt: the user turn without the image placeholder.
        response: the gold assistant turn (brief answer, or steps then ``Answer:``).
        answer: the gold answer as stored (an option letter for multiple choice).
        answer_type: ``multiple_choice``, ``yes_no``, ``number`` or ``open``.
        choices: option texts for multiple choice (and yes/no), else ``None``.
        style: ``brief`` or ``steps``.
        skills: skills the task needs.
    """

    task: str
    question: Question
    prompt: str
    response: str
    answer: str
    answer_type: str
    choices: list[str] | None
    style: str
    skills: tuple[str, ...]

    def world_metadata(self) -> dict:
        """The ground truth stored under ``metadata["world"]``."""
        q = self.question
        return {
            "task": self.task,
            "skills": list(self.skills),
            "scene": q.scene.to_dict(),
            "scene_digest": q.scene.digest(),
            "steps": [render_step(c) for c in q.steps],
            "step_skills": [c.skill for c in q.steps],
            "answer": self.answer,
            "answer_value": q.answer,
            "answer_type": self.answer_type,
            "style": self.style,
        }


def make_support_sample(
    rng: random.Random, task: SourceTask, cfg: SceneConfig, blind_skills: Collection[str] = ()
) -> Sample:
    """Generate one supporting-pool sample of a source task.

    Args:
        rng: the row's random stream.
        task: the source task.
        cfg: scene settings.
        blind_skills: skills whose steps (and the answers that follow from them) carry no information
            (:func:`edray.world.questions.blind`): how the generic student's pretraining rows teach
            format-preserving gaps. Empty for the supporting pool, whose rows are all correct.

    Returns:
        The sample (not yet rendered).
    """
    q = KINDS[task.kind].generate(rng, cfg)
    if blind_skills:
        q = blind(q, task.kind, blind_skills, rng, cfg)
    prompt = fix_articles(task.template.format(**q.slots))
    steps = [render_step(c) for c in q.steps]
    response = format_steps(steps, q.answer) if task.style == "steps" else q.answer
    choices = ["yes", "no"] if q.answer_type == "yes_no" else None
    return Sample(task.name, q, prompt, response, q.answer, q.answer_type, choices, task.style, task.skills)


def make_eval_sample(rng: random.Random, task_name: str, cfg: SceneConfig, form: str = "auto") -> Sample:
    """Generate one evaluation sample of a target task, or of the general suite.

    Args:
        rng: the row's random stream.
        task_name: a target task name or :data:`GENERAL_SUITE`.
        cfg: scene settings.
        form: ``auto`` (the task's forms, drawn per row), ``multiple_choice``, or ``open`` (the
            kind's own answer type).

    Returns:
        The sample; its response always reasons in steps.

    Raises:
        KeyError: unknown task.
        ValueError: unknown form.
    """
    if form not in ("auto", "multiple_choice", "open"):
        raise ValueError(f"form must be auto, multiple_choice or open, got {form!r}")
    if task_name == GENERAL_SUITE:
        # Uniform over skills, then over the source tasks answered in steps that test that skill, so every
        # skill gets a comparable number of retention questions. A row counts for the one skill it was
        # drawn for (the comparison rows' counting steps are support, not what they test).
        skill = rng.choice(general_skills())
        source = rng.choice(_general_sources(skill))
        q = KINDS[source.kind].generate(rng, cfg)
        template, forms, skills_needed, name = source.template, ("open",), (skill,), source.name
    else:
        target = TARGET_TASK_BY_NAME[task_name]
        q = KINDS[target.kind].generate(rng, cfg)
        template, forms, skills_needed, name = target.template, target.forms, target.skills, target.name
    chosen = rng.choice(forms) if form == "auto" else form
    prompt = fix_articles(template.format(**q.slots))
    steps = [render_step(c) for c in q.steps]
    if chosen == "multiple_choice":
        choices = list(q.options)
        letter = OPTION_LETTERS[choices.index(q.answer)]
        listed = " ".join(f"{OPTION_LETTERS[i]}. {c}" for i, c in enumerate(choices))
        prompt = f"{prompt}\nOptions: {listed}\n{MC_INSTRUCTION}"
        answer, answer_type = letter, "multiple_choice"
    else:
        answer, answer_type = q.answer, q.answer_type
        choices = ["yes", "no"] if q.answer_type == "yes_no" else None
    response = format_steps(steps, answer)
    return Sample(name, q, prompt, response, answer, answer_type, choices, "steps", skills_needed)


def _general_sources(skill: str) -> list[SourceTask]:
    steps = [t for t in SOURCE_TASKS if t.style == "steps"]
    single = [t for t in steps if t.skills == (skill,)]
    return single or [t for t in steps if t.kind in ("compare_color", "compare_shape") and skill in t.skills]


def general_skills() -> list[str]:
    """The skills the general suite tests, each with its own questions: every skill of a single-skill
    source task, and count comparison (asked through the comparison tasks)."""
    from edray.world.skills import SKILL_NAMES

    return [s for s in SKILL_NAMES if _general_sources(s)]


def template_texts() -> Iterator[str]:
    """Every literal wording (slots removed) of source and target tasks and fixed instructions."""
    fmt = string.Formatter()
    templates = [t.template for t in SOURCE_TASKS] + [t.template for t in TARGET_TASKS]
    for tpl in templates:
        yield " ".join(lit for lit, _, _, _ in fmt.parse(tpl))
    yield f"Options: {MC_INSTRUCTION} Step 1: Answer:"


# --- recognizing a task from its wording (used by the world teacher) -----------------------------

_SLOT_PATTERNS: dict[str, str] = {}


def _slot_patterns() -> dict[str, str]:
    if not _SLOT_PATTERNS:
        colors, shapes = "|".join(COLORS), "|".join(SHAPES)
        plurals = "|".join(SHAPE_PLURALS.values())
        cols = "|".join(sorted({c for g in (2, 3, 4) for c in column_names(g)}))
        desc = rf"(?:(?:{colors}) )?(?:{shapes}|object)"  # targets never name a size
        group = rf"(?:(?:{colors}) objects)"
        _SLOT_PATTERNS.update(
            target=desc, color=colors, shape=shapes, shapes=plurals, group_a=group, group_b=group,
            shapes_a=plurals, shapes_b=plurals,
            color_a=colors, color_b=colors, shape_a=shapes, shape_b=shapes, column=cols,
        )
    return _SLOT_PATTERNS


_TASK_PATTERNS: list[tuple[re.Pattern[str], str]] = []


def _task_patterns() -> list[tuple[re.Pattern[str], str]]:
    if not _TASK_PATTERNS:
        slots = _slot_patterns()
        fmt = string.Formatter()
        for name, tpl in [(t.name, t.template) for t in SOURCE_TASKS] + [(t.name, t.template) for t in TARGET_TASKS]:
            parts = []
            for lit, slot, _, _ in fmt.parse(tpl):
                parts.append(_literal_pattern(lit))
                if slot:
                    parts.append(f"(?:{slots[slot]})")
            pattern = "".join(parts)
            # Evaluation prompts may end with an options block and the multiple-choice instruction.
            full = rf"^\s*{pattern}(?:\s+Options:.*)?\s*$"
            _TASK_PATTERNS.append((re.compile(full, re.IGNORECASE | re.DOTALL), name))
    return _TASK_PATTERNS


def _literal_pattern(lit: str) -> str:
    out = []
    for tok in re.split(r"(\s+)", lit):
        if not tok:
            continue
        if tok.isspace():
            out.append(r"\s+")
        elif tok == "a":
            out.append("an?")  # fix_articles may have turned "a" into "an"
        else:
            out.append(re.escape(tok))
    return "".join(out)


def identify_task(text: str) -> str | None:
    """The source or target task whose wording a question text follows, or ``None``.

    Args:
        text: the user turn (the image placeholder and a trailing options block are allowed).
    """
    t = " ".join(text.replace("<image>", " ").split())
    for pattern, name in _task_patterns():
        if pattern.match(t):
            return name
    return None


def task_skills(name: str) -> tuple[str, ...]:
    """Skills of a source or target task.

    Raises:
        KeyError: unknown task.
    """
    if name in SOURCE_TASK_BY_NAME:
        return SOURCE_TASK_BY_NAME[name].skills
    return TARGET_TASK_BY_NAME[name].skills
