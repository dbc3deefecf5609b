"""Question kinds, the source tasks of the supporting pool, the target tasks and the general suite.

A *question kind* draws a scene and a question about it, and solves it with reasoning steps from the
closed step language of :mod:`edray.world.skills`; it declares the skills it needs. A *source task*
is a kind with its own instruction wording and answer style (brief or with steps), like the
expert-written tasks of Vision-Flan. A *target task* combines skills and is phrased unlike any source
task; its rows are what the pipeline diagnoses and evaluates. Everything here is pure: randomness
comes from the caller's ``random.Random``.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from edray.world.config import SceneConfig
from edray.world.scene import COLORS, SHAPE_PLURALS, SHAPES, SIZES, Scene, SceneObject, column_names, row_names, sample_scene
from edray.world.skills import StepClaim, describe, fix_articles, format_steps, make_subject, matching, render_step

MAX_TRIES = 200


@dataclass
class Question:
    """A solved question about a scene.

    Attributes:
        scene: the scene asked about.
        slots: values for the wording's ``{slot}`` fields.
        steps: the gold reasoning, one claim per step.
        answer: the gold answer (open form).
        answer_type: ``open``, ``yes_no`` or ``number``.
        options: plausible answers of the same type, including the gold one (used for the
            multiple-choice form).
    """

    scene: Scene
    slots: dict[str, str]
    steps: list[StepClaim]
    answer: str
    answer_type: str
    options: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class QuestionKind:
    """A family of questions: the skills it needs and a generator."""

    name: str
    skills: tuple[str, ...]
    generate: Callable[[random.Random, SceneConfig], Question]


class ResampleError(RuntimeError):
    """A generator could not find a fitting scene in :data:`MAX_TRIES` draws (scene config too small)."""


def _retry(fn: Callable[..., Question | None]) -> Callable[..., Question]:
    """Redraw until the generator finds a scene that fits its question (e.g. a unique target)."""

    def wrapped(rng: random.Random, cfg: SceneConfig, *args: str) -> Question:
        for _ in range(MAX_TRIES):
            q = fn(rng, cfg, *args)
            if q is not None:
                return q
        raise ResampleError(f"{fn.__name__}: no fitting scene in {MAX_TRIES} draws with {cfg}")

    wrapped.__name__ = fn.__name__
    return wrapped


def _unique_subjects(scene: Scene, obj: SceneObject, exclude: set[str], allow_size: bool = False) -> list[dict[str, str]]:
    """Descriptions that single out ``obj`` without naming the attributes in ``exclude``."""
    cands: list[dict[str, str]] = []
    if len(scene.objects) == 1:
        cands.append({})
    options = [{"shape": obj.shape}, {"color": obj.color}, {"color": obj.color, "shape": obj.shape}]
    if allow_size:
        options.append({"size": obj.size, "shape": obj.shape})
    for d in options:
        if exclude & set(d):
            continue
        if matching(scene, make_subject(**d)) == [obj]:
            cands.append(d)
    return cands


def _pick_target(rng: random.Random, scene: Scene, exclude: set[str]) -> tuple[SceneObject, dict[str, str]] | None:
    objs = list(scene.objects)
    rng.shuffle(objs)
    for obj in objs:
        cands = _unique_subjects(scene, obj, exclude)
        if cands:
            return obj, rng.choice(cands)
    return None


def _options(rng: random.Random, gold: str, pool: list[str], k: int = 4) -> list[str]:
    others = [p for p in pool if p != gold]
    rng.shuffle(others)
    opts = [gold] + others[: k - 1]
    rng.shuffle(opts)
    return opts


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _count_options(rng: random.Random, gold: int, cfg: SceneConfig) -> list[str]:
    return _options(rng, str(gold), [str(i) for i in range(0, cfg.max_objects + 1)])


# --- single-skill kinds ---------------------------------------------------------------------------


@_retry
def _attribute(rng: random.Random, cfg: SceneConfig, attr: str) -> Question | None:
    scene = sample_scene(rng, cfg)
    picked = _pick_target(rng, scene, {attr})
    if picked is None:
        return None
    obj, subj = picked
    value = getattr(obj, attr)
    skill = {"color": "color_recognition", "shape": "shape_recognition", "size": "size_recognition"}[attr]
    pool = {"color": list(COLORS), "shape": list(SHAPES), "size": list(SIZES)}[attr]
    subject = make_subject(**subj)
    return Question(scene, {"target": describe(subject)}, [StepClaim(skill, subject, value)], value, "open",
                    _options(rng, value, pool))


def _color_name(rng: random.Random, cfg: SceneConfig) -> Question:
    return _attribute(rng, cfg, "color")


def _shape_name(rng: random.Random, cfg: SceneConfig) -> Question:
    return _attribute(rng, cfg, "shape")


def _size_name(rng: random.Random, cfg: SceneConfig) -> Question:
    return _attribute(rng, cfg, "size")


def _count_all(rng: random.Random, cfg: SceneConfig) -> Question:
    scene = sample_scene(rng, cfg)
    n = len(scene.objects)
    return Question(scene, {}, [StepClaim("object_counting", (), str(n))], str(n), "number", _count_options(rng, n, cfg))


def _count_attr(rng: random.Random, cfg: SceneConfig, attr: str) -> Question:
    scene = sample_scene(rng, cfg)
    present = [getattr(o, attr) for o in scene.objects]
    pool = list(COLORS) if attr == "color" else list(SHAPES)
    value = rng.choice(present) if rng.random() < 0.75 else rng.choice(pool)
    subject = make_subject(**{attr: value})
    n = len(matching(scene, subject))
    skill = "counting_by_color" if attr == "color" else "counting_by_shape"
    slots = {"color": value} if attr == "color" else {"shapes": SHAPE_PLURALS[value], "shape": value}
    return Question(scene, slots, [StepClaim(skill, subject, str(n))], str(n), "number", _count_options(rng, n, cfg))


def _count_color(rng: random.Random, cfg: SceneConfig) -> Question:
    return _count_attr(rng, cfg, "color")


def _count_shape(rng: random.Random, cfg: SceneConfig) -> Question:
    return _count_attr(rng, cfg, "shape")


def _position(rng: random.Random, cfg: SceneConfig, axis: str) -> Question:
    # A single object: relations between objects are out of reach for the tiny student.
    scene = sample_scene(rng, cfg, n_objects=1)
    obj = scene.objects[0]
    subj = rng.choice([{}, {"shape": obj.shape}, {"color": obj.color, "shape": obj.shape}])
    subject = make_subject(**subj)
    if axis == "h":
        value, skill, pool = scene.column_of(obj), "horizontal_position", list(dict.fromkeys(column_names(cfg.grid)))
    else:
        value, skill, pool = scene.row_of(obj), "vertical_position", list(dict.fromkeys(row_names(cfg.grid)))
    return Question(scene, {"target": describe(subject)}, [StepClaim(skill, subject, value)], value, "open", _options(rng, value, pool))


def _pos_h(rng: random.Random, cfg: SceneConfig) -> Question:
    return _position(rng, cfg, "h")


def _pos_v(rng: random.Random, cfg: SceneConfig) -> Question:
    return _position(rng, cfg, "v")


def _exist(rng: random.Random, cfg: SceneConfig, attr: str) -> Question:
    scene = sample_scene(rng, cfg)
    pool = list(COLORS) if attr == "color" else list(SHAPES)
    present = sorted({getattr(o, attr) for o in scene.objects})
    absent = [p for p in pool if p not in present]
    want = rng.random() < 0.5 and bool(absent)
    value = rng.choice(absent) if want else rng.choice(present)
    subject = make_subject(**{attr: value})
    found = bool(matching(scene, subject))
    skill = "color_existence" if attr == "color" else "shape_existence"
    return Question(scene, {attr: value}, [StepClaim(skill, subject, "", not found)], _yes_no(found), "yes_no", ["yes", "no"])


def _exist_color(rng: random.Random, cfg: SceneConfig) -> Question:
    return _exist(rng, cfg, "color")


def _exist_shape(rng: random.Random, cfg: SceneConfig) -> Question:
    return _exist(rng, cfg, "shape")


def _binding_pair(rng: random.Random, scene: Scene, want: bool) -> tuple[str, str]:
    """A (color, shape) that is present (``want``) or absent; absent pairs prefer a color and a shape
    that both occur in the scene on other objects, so that only binding tells them apart."""
    pairs = {(o.color, o.shape) for o in scene.objects}
    if want:
        return rng.choice(sorted(pairs))
    colors = sorted({o.color for o in scene.objects})
    shapes = sorted({o.shape for o in scene.objects})
    hard = [(c, s) for c in colors for s in shapes if (c, s) not in pairs]
    if hard and rng.random() < 0.8:
        return rng.choice(hard)
    while True:
        c, s = rng.choice(list(COLORS)), rng.choice(SHAPES)
        if (c, s) not in pairs:
            return c, s


def _binding(rng: random.Random, cfg: SceneConfig) -> Question:
    scene = sample_scene(rng, cfg)
    color, shape = _binding_pair(rng, scene, rng.random() < 0.5)
    subject = make_subject(color=color, shape=shape)
    found = bool(matching(scene, subject))
    return Question(scene, {"color": color, "shape": shape}, [StepClaim("attribute_binding", subject, "", not found)],
                    _yes_no(found), "yes_no", ["yes", "no"])


# --- two-skill kinds ------------------------------------------------------------------------------


def _compare(rng: random.Random, cfg: SceneConfig, attr: str) -> Question:
    scene = sample_scene(rng, cfg, n_objects=rng.randint(max(2, cfg.min_objects), cfg.max_objects))
    pool = list(COLORS) if attr == "color" else list(SHAPES)
    present = [getattr(o, attr) for o in scene.objects]
    a = rng.choice(present)
    b = rng.choice([p for p in (present + pool) if p != a])
    sa, sb = make_subject(**{attr: a}), make_subject(**{attr: b})
    na, nb = len(matching(scene, sa)), len(matching(scene, sb))
    skill = "counting_by_color" if attr == "color" else "counting_by_shape"
    rel = "more" if na > nb else "fewer" if na < nb else "same"
    steps = [StepClaim(skill, sa, str(na)), StepClaim(skill, sb, str(nb)), StepClaim("count_comparison", sa, rel, other=sb)]
    if attr == "color":
        slots = {"group_a": f"{a} objects", "group_b": f"{b} objects", "color_a": a, "color_b": b}
    else:
        slots = {"shapes_a": SHAPE_PLURALS[a], "shapes_b": SHAPE_PLURALS[b], "shape_a": a, "shape_b": b}
    return Question(scene, slots, steps, _yes_no(na > nb), "yes_no", ["yes", "no"])


def _compare_color(rng: random.Random, cfg: SceneConfig) -> Question:
    return _compare(rng, cfg, "color")


def _compare_shape(rng: random.Random, cfg: SceneConfig) -> Question:
    return _compare(rng, cfg, "shape")


@_retry
def _color_in_column(rng: random.Random, cfg: SceneConfig) -> Question | None:
    scene = sample_scene(rng, cfg, n_objects=rng.randint(max(2, cfg.min_objects), cfg.max_objects))
    cols = column_names(cfg.grid)
    for col in rng.sample(sorted(set(cols)), len(set(cols))):
        objs = [o for o in scene.objects if cols[o.col] == col]
        if len(objs) == 1 and len(matching(scene, make_subject(shape=objs[0].shape))) == 1:
            obj = objs[0]
            subj = make_subject(shape=obj.shape)
            steps = [StepClaim("horizontal_position", subj, col), StepClaim("color_recognition", subj, obj.color)]
            return Question(scene, {"column": col}, steps, obj.color, "open", _options(rng, obj.color, list(COLORS)))
    return None


@_retry
def _shape_of_large(rng: random.Random, cfg: SceneConfig) -> Question | None:
    scene = sample_scene(rng, cfg, n_objects=rng.randint(max(2, cfg.min_objects), cfg.max_objects))
    large = [o for o in scene.objects if o.size == "large"]
    if len(large) != 1 or len(matching(scene, make_subject(color=large[0].color))) != 1:
        return None
    obj = large[0]
    subj = make_subject(color=obj.color)
    steps = [StepClaim("size_recognition", subj, "large"), StepClaim("shape_recognition", subj, obj.shape)]
    return Question(scene, {}, steps, obj.shape, "open", _options(rng, obj.shape, list(SHAPES)))


@_retry
def _spot_item(rng: random.Random, cfg: SceneConfig) -> Question | None:
    scene = sample_scene(rng, cfg, n_objects=rng.randint(max(2, cfg.min_objects), cfg.max_objects))
    color, shape = _binding_pair(rng, scene, rng.random() < 0.5)
    shape_subj = make_subject(shape=shape)
    has_shape = bool(matching(scene, shape_subj))
    if not has_shape and rng.random() < 0.8:
        return None  # mostly ask where the shape is there, so binding decides
    subject = make_subject(color=color, shape=shape)
    found = bool(matching(scene, subject))
    steps = [StepClaim("shape_existence", shape_subj, "", not has_shape)]
    if has_shape:
        steps.append(StepClaim("attribute_binding", subject, "", not found))
    return Question(scene, {"color": color, "shape": shape}, steps, _yes_no(found), "yes_no", ["yes", "no"])


@_retry
def _locate_item(rng: random.Random, cfg: SceneConfig) -> Question | None:
    scene = sample_scene(rng, cfg, n_objects=rng.randint(max(2, cfg.min_objects), cfg.max_objects))
    objs = [o for o in scene.objects if len(matching(scene, make_subject(color=o.color, shape=o.shape))) == 1]
    if not objs:
        return None
    obj = rng.choice(objs)
    subj = make_subject(color=obj.color, shape=obj.shape)
    col = scene.column_of(obj)
    steps = [StepClaim("attribute_binding", subj, "", False), StepClaim("horizontal_position", subj, col)]
    return Question(scene, {"color": obj.color, "shape": obj.shape}, steps, col, "open",
                    list(dict.fromkeys(column_names(cfg.grid))))


def _corner(rng: random.Random, cfg: SceneConfig) -> Question:
    scene = sample_scene(rng, cfg, n_objects=1)
    obj = scene.objects[0]
    subj = make_subject(color=obj.color, shape=obj.shape)
    row, col = scene.row_of(obj), scene.column_of(obj)
    steps = [StepClaim("vertical_position", subj, row), StepClaim("horizontal_position", subj, col)]
    corners = [f"{r} {c}" for r in dict.fromkeys(row_names(cfg.grid)) for c in dict.fromkeys(column_names(cfg.grid))]
    return Question(scene, {"color": obj.color, "shape": obj.shape}, steps, f"{row} {col}", "open",
                    _options(rng, f"{row} {col}", corners))


@_retry
def _same_color_count(rng: random.Random, cfg: SceneConfig) -> Question | None:
    scene = sample_scene(rng, cfg, n_objects=rng.randint(max(2, cfg.min_objects), cfg.max_objects))
    objs = [o for o in scene.objects if len(matching(scene, make_subject(shape=o.shape))) == 1]
    if not objs:
        return None
    obj = rng.choice(objs)
    n = len(matching(scene, make_subject(color=obj.color)))
    steps = [StepClaim("color_recognition", make_subject(shape=obj.shape), obj.color),
             StepClaim("counting_by_color", make_subject(color=obj.color), str(n))]
    return Question(scene, {"shape": obj.shape}, steps, str(n), "number", _count_options(rng, n, cfg))


KINDS: dict[str, QuestionKind] = {
    k.name: k
    for k in (
        QuestionKind("color_name", ("color_recognition",), _color_name),
        QuestionKind("shape_name", ("shape_recognition",), _shape_name),
        QuestionKind("size_name", ("size_recognition",), _size_name),
        QuestionKind("count_all", ("object_counting",), _count_all),
        QuestionKind("count_color", ("counting_by_color",), _count_color),
        QuestionKind("count_shape", ("counting_by_shape",), _count_shape),
        QuestionKind("position_h", ("horizontal_position",), _pos_h),
        QuestionKind("position_v", ("vertical_position",), _pos_v),
        QuestionKind("exist_shape", ("shape_existence",), _exist_shape),
        QuestionKind("exist_color", ("color_existence",), _exist_color),
        QuestionKind("binding", ("attribute_binding",), _binding),
        QuestionKind("compare_color", ("counting_by_color", "count_comparison"), _compare_color),
        QuestionKind("compare_shape", ("counting_by_shape", "count_comparison"), _compare_shape),
        QuestionKind("color_in_column", ("horizontal_position", "color_recognition"), _color_in_column),
        QuestionKind("shape_of_large", ("size_recognition", "shape_recognition"), _shape_of_large),
        QuestionKind("spot_item", ("shape_existence", "attribute_binding"), _spot_item),
        QuestionKind("locate_item", ("attribute_binding", "horizontal_position"), _locate_item),
        QuestionKind("corner", ("vertical_position", "horizontal_position"), _corner),
        QuestionKind("same_color_count", ("color_recognition", "counting_by_color"), _same_color_count),
    )
}


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
        ("Which colour does the {target} have? Reason step by step.", "steps"),
        ("Tell me the hue of the {target}, showing your steps.", "steps"),
        ("Identify the color of the {target} in the picture.", "brief"),
    ],
    "shape_name": [
        ("What shape is the {target}?", "brief"),
        ("Name the shape of the {target}. Use one word.", "brief"),
        ("Which figure is the {target}? Reason step by step.", "steps"),
        ("Tell me what form the {target} has, showing your steps.", "steps"),
        ("Identify the geometric shape of the {target}.", "brief"),
    ],
    "size_name": [
        ("Is the {target} small or large?", "brief"),
        ("Tell me the size of the {target}: small or large.", "brief"),
        ("How big is the {target}? Reason step by step.", "steps"),
        ("Judge whether the {target} is large or small, showing your steps.", "steps"),
        ("What size is the {target}?", "brief"),
    ],
    "count_all": [
        ("How many objects are in the image?", "brief"),
        ("Count the objects in the picture.", "brief"),
        ("How many shapes can you see? Reason step by step.", "steps"),
        ("Give the number of items in the image, showing your steps.", "steps"),
        ("What is the total number of objects shown?", "brief"),
    ],
    "count_color": [
        ("How many {color} objects are there?", "brief"),
        ("Count the {color} objects in the picture.", "brief"),
        ("How many objects are {color}? Reason step by step.", "steps"),
        ("Give the number of {color} items, showing your steps.", "steps"),
        ("What is the number of {color} shapes in the image?", "brief"),
    ],
    "count_shape": [
        ("How many {shapes} are there?", "brief"),
        ("Count the {shapes} in the picture.", "brief"),
        ("How many {shapes} can you see? Reason step by step.", "steps"),
        ("Give the number of {shapes}, showing your steps.", "steps"),
        ("What is the number of {shapes} in the image?", "brief"),
    ],
    "position_h": [
        ("Is the {target} on the left or on the right?", "brief"),
        ("In which column is the {target}: left or right?", "brief"),
        ("Which side of the image is the {target} on? Reason step by step.", "steps"),
        ("Say whether the {target} is left or right, showing your steps.", "steps"),
        ("Where is the {target} horizontally?", "brief"),
    ],
    "position_v": [
        ("Is the {target} at the top or at the bottom?", "brief"),
        ("In which row is the {target}: top or bottom?", "brief"),
        ("Which half of the image holds the {target}, top or bottom? Reason step by step.", "steps"),
        ("Say whether the {target} is up or down, showing your steps.", "steps"),
        ("Where is the {target} vertically?", "brief"),
    ],
    "exist_shape": [
        ("Is there a {shape} in the image?", "brief"),
        ("Does the picture contain a {shape}? Answer yes or no.", "brief"),
        ("Can a {shape} be seen here? Reason step by step.", "steps"),
        ("Check whether any {shape} is present, showing your steps.", "steps"),
        ("Is any {shape} shown?", "brief"),
    ],
    "exist_color": [
        ("Is there a {color} object in the image?", "brief"),
        ("Does the picture contain anything {color}? Answer yes or no.", "brief"),
        ("Can a {color} item be seen here? Reason step by step.", "steps"),
        ("Check whether any {color} object is present, showing your steps.", "steps"),
        ("Is any {color} shape shown?", "brief"),
    ],
    "binding": [
        ("Is there a {color} {shape}?", "brief"),
        ("Does the picture contain a {color} {shape}? Answer yes or no.", "brief"),
        ("Can a {color} {shape} be seen here? Reason step by step.", "steps"),
        ("Check whether a {shape} that is {color} is present, showing your steps.", "steps"),
        ("Is any {shape} in the image {color}?", "brief"),
    ],
    "compare_color": [
        ("Are there more {group_a} than {group_b}?", "brief"),
        ("Compare the counts: are {group_a} more numerous than {group_b}? Reason step by step.", "steps"),
        ("Do {color_a} items outnumber {color_b} items? Show your steps.", "steps"),
    ],
    "compare_shape": [
        ("Are there more {shapes_a} than {shapes_b} in the image?", "brief"),
        ("Compare the numbers: are {shapes_a} more frequent than {shapes_b}? Reason step by step.", "steps"),
        ("Is the number of {shapes_a} greater than the number of {shapes_b}? Show your steps.", "steps"),
    ],
    "color_in_column": [
        ("What color is the object in the {column} column?", "brief"),
        ("Name the colour of the shape on the {column} side. Reason step by step.", "steps"),
    ],
    "shape_of_large": [
        ("What shape is the large object?", "brief"),
        ("Name the figure of the biggest item. Reason step by step.", "steps"),
    ],
}


def _build_source_tasks() -> tuple[SourceTask, ...]:
    out: list[SourceTask] = []
    for kind, wordings in _SOURCE_WORDINGS.items():
        for i, (template, style) in enumerate(wordings):
            out.append(SourceTask(f"{kind}_{i + 1}", kind, template, style))
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
    TargetTask("spot_item", "spot_item",
               "Look closely: can you spot a {color} {shape} anywhere here? Work it out in steps.",
               ("yes_no",), "is a given colour-shape pair present (shape existence, then binding)"),
    TargetTask("locate_item", "locate_item",
               "Find the {color} {shape}. On which side of the picture does it sit? Work it out in steps.",
               ("multiple_choice", "open"), "binding, then horizontal position of the found object"),
    TargetTask("corner", "corner",
               "In which corner of the picture does the {color} {shape} sit? Work it out in steps.",
               ("multiple_choice", "open"), "vertical and horizontal position of a single object"),
    TargetTask("outnumber", "compare_color",
               "Do {color_a} things outnumber {color_b} things in this picture? Work it out in steps.",
               ("yes_no",), "count two colours, then compare the counts"),
    TargetTask("same_colour_count", "same_color_count",
               "How many things share the colour of the {shape}? Work it out in steps.",
               ("number", "multiple_choice"), "colour of a shape, then count that colour"),
    TargetTask("big_one_shape", "shape_of_large",
               "Which kind of figure is the big one? Work it out in steps.",
               ("open", "multiple_choice"), "find the one large object, then name its shape"),
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


def make_support_sample(rng: random.Random, task: SourceTask, cfg: SceneConfig) -> Sample:
    """Generate one supporting-pool sample of a source task.

    Args:
        rng: the row's random stream.
        task: the source task.
        cfg: scene settings.

    Returns:
        The sample (not yet rendered).
    """
    q = KINDS[task.kind].generate(rng, cfg)
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
        # Uniform over skills, then over the single-skill source tasks of that skill, so every skill
        # gets a comparable number of retention questions.
        single = [t for t in SOURCE_TASKS if len(t.skills) == 1]
        skills = sorted({t.skills[0] for t in single})
        skill = rng.choice(skills)
        source = rng.choice([t for t in single if t.skills[0] == skill])
        q = KINDS[source.kind].generate(rng, cfg)
        template, forms, skills_needed, name = source.template, ("open",), source.skills, source.name
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
