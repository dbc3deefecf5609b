"""Question kinds: each draws a scene and a question about it, and solves it with reasoning steps.

Steps come from the closed step language of :mod:`edray.world.skills`; each kind declares the skills it
needs. :data:`KINDS` holds them all by name; the source and target tasks of :mod:`edray.world.tasks`
word them. Everything here is pure: randomness comes from the caller's ``random.Random``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace

from edray.world.config import SceneConfig
from edray.world.scene import COLORS, SHAPE_PLURALS, SHAPES, SIZES, Scene, SceneObject, column_names, row_names, sample_scene
from edray.world.skills import StepClaim, describe, make_subject, matching

MAX_TRIES = 200
_EXISTENCE = ("shape_existence", "color_existence", "attribute_binding")
COMPARISONS = ("more", "fewer", "same")
NOWHERE = "nowhere"


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


def _last_value(steps: list[StepClaim]) -> str:
    last = steps[-1]
    if last.skill in _EXISTENCE:
        return _yes_no(not last.negated)
    return last.value


@dataclass(frozen=True)
class QuestionKind:
    """A family of questions: the skills it needs, a generator, and how its answer follows its steps.

    Attributes:
        name: kind id.
        skills: the skills its questions need.
        generate: draws a scene and solves a question about it.
        answer_of: the answer the steps imply (the gold answer for gold steps); a student that writes a
            wrong step and then reasons from it gives this answer.
    """

    name: str
    skills: tuple[str, ...]
    generate: Callable[[random.Random, SceneConfig], Question]
    answer_of: Callable[[list[StepClaim]], str] = _last_value


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
    want = rng.random() < 0.6
    color, shape = _binding_pair(rng, scene, want)
    subj = make_subject(color=color, shape=shape)
    objs = matching(scene, subj)
    if len(objs) > 1:
        return None
    cols = list(dict.fromkeys(column_names(cfg.grid)))
    steps = [StepClaim("attribute_binding", subj, "", not objs)]
    if objs:
        steps.append(StepClaim("horizontal_position", subj, scene.column_of(objs[0])))
    answer = steps[-1].value if objs else NOWHERE
    return Question(scene, {"color": color, "shape": shape}, steps, answer, "open", cols + [NOWHERE])


def _locate_answer(steps: list[StepClaim]) -> str:
    return NOWHERE if steps[0].negated or len(steps) < 2 else steps[1].value


def _spot_answer(steps: list[StepClaim]) -> str:
    return "no" if steps[0].negated else _yes_no(not steps[-1].negated)


def _corners(cfg: SceneConfig) -> list[str]:
    return [f"{r} {c}" for r in dict.fromkeys(row_names(cfg.grid)) for c in dict.fromkeys(column_names(cfg.grid))]


def _corner(rng: random.Random, cfg: SceneConfig) -> Question:
    scene = sample_scene(rng, cfg, n_objects=1)
    obj = scene.objects[0]
    subj = make_subject(color=obj.color, shape=obj.shape)
    row, col = scene.row_of(obj), scene.column_of(obj)
    steps = [StepClaim("vertical_position", subj, row), StepClaim("horizontal_position", subj, col)]
    return Question(scene, {"color": obj.color, "shape": obj.shape}, steps, f"{row} {col}", "open", _corners(cfg))


@_retry
def _colour_corner(rng: random.Random, cfg: SceneConfig) -> Question | None:
    scene = sample_scene(rng, cfg)
    objs = [o for o in scene.objects if len(matching(scene, make_subject(color=o.color))) == 1]
    if not objs:
        return None
    return _colour_corner_of(cfg, scene, rng.choice(objs))


def _lone_colour_corner(rng: random.Random, cfg: SceneConfig) -> Question:
    # The target task's kind: one object, as in the position tasks, so that the horizontal step is one the
    # student can take and its errors are at the vertical step (placing one object among several is out of
    # reach for the tiny student). The pool's colour_corner rows keep up to four objects.
    scene = sample_scene(rng, cfg, n_objects=1)
    return _colour_corner_of(cfg, scene, scene.objects[0])


def _colour_corner_of(cfg: SceneConfig, scene: Scene, obj: SceneObject) -> Question:
    subj = make_subject(color=obj.color)
    row, col = scene.row_of(obj), scene.column_of(obj)
    steps = [StepClaim("horizontal_position", subj, col), StepClaim("vertical_position", subj, row)]
    return Question(scene, {"color": obj.color}, steps, f"{row} {col}", "open", _corners(cfg))


def _corner_answer(steps: list[StepClaim]) -> str:
    by_skill = {c.skill: c.value for c in steps}
    return f"{by_skill.get('vertical_position', '')} {by_skill.get('horizontal_position', '')}".strip()


def _relation(rng: random.Random, cfg: SceneConfig) -> Question:
    q = _compare(rng, cfg, "color")
    rel = q.steps[-1].value
    return Question(q.scene, q.slots, q.steps, rel, "open", list(COMPARISONS))


def _compare_answer(steps: list[StepClaim]) -> str:
    return _yes_no(steps[-1].value == "more")


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
        QuestionKind("compare_color", ("counting_by_color", "count_comparison"), _compare_color, _compare_answer),
        QuestionKind("compare_shape", ("counting_by_shape", "count_comparison"), _compare_shape, _compare_answer),
        QuestionKind("relation", ("counting_by_color", "count_comparison"), _relation),
        QuestionKind("color_in_column", ("horizontal_position", "color_recognition"), _color_in_column),
        QuestionKind("shape_of_large", ("size_recognition", "shape_recognition"), _shape_of_large),
        QuestionKind("spot_item", ("shape_existence", "attribute_binding"), _spot_item, _spot_answer),
        QuestionKind("locate_item", ("attribute_binding", "horizontal_position"), _locate_item, _locate_answer),
        QuestionKind("corner", ("vertical_position", "horizontal_position"), _corner, _corner_answer),
        QuestionKind("colour_corner", ("horizontal_position", "vertical_position"), _colour_corner, _corner_answer),
        QuestionKind("lone_colour_corner", ("horizontal_position", "vertical_position"), _lone_colour_corner, _corner_answer),
        QuestionKind("same_color_count", ("color_recognition", "counting_by_color"), _same_color_count),
    )
}


# --- skills without information ---------------------------------------------------------------------


def _random_claim(rng: random.Random, claim: StepClaim, cfg: SceneConfig) -> StepClaim:
    """The claim with its value drawn at random among the values its template takes."""
    if claim.skill in _EXISTENCE:
        return replace(claim, negated=rng.random() < 0.5)
    if claim.skill == "vertical_position":
        return replace(claim, value=rng.choice(list(dict.fromkeys(row_names(cfg.grid)))))
    if claim.skill == "horizontal_position":
        return replace(claim, value=rng.choice(list(dict.fromkeys(column_names(cfg.grid)))))
    if claim.skill == "count_comparison":
        return replace(claim, value=rng.choice(COMPARISONS))
    pools = {"color_recognition": list(COLORS), "shape_recognition": list(SHAPES), "size_recognition": list(SIZES)}
    if claim.skill in pools:
        return replace(claim, value=rng.choice(pools[claim.skill]))
    return replace(claim, value=str(rng.randint(0, cfg.max_objects)))


def blind(q: Question, kind: str, skills: Collection[str], rng: random.Random, cfg: SceneConfig) -> Question:
    """The question as a student without ``skills`` would be taught it: every step of those skills has
    a random value (fluent, but carrying no information about the image), and the answer follows the
    steps as written.

    This is how the world's generic student gets *format-preserving gaps*: it writes well-formed gap
    steps at chance and answers from its own steps, as real models do.

    Args:
        q: a solved question.
        kind: its kind name.
        skills: the skills to blind.
        rng: the row's random stream.
        cfg: scene settings (the values a position can take).

    Returns:
        ``q`` itself when none of its steps uses a blinded skill, else a copy with new steps and answer.
    """
    if not any(c.skill in skills for c in q.steps):
        return q
    steps = [_random_claim(rng, c, cfg) if c.skill in skills else c for c in q.steps]
    if kind == "locate_item":
        # The steps after the binding step exist only when the item was found.
        if steps[0].negated:
            steps = steps[:1]
        elif len(steps) == 1:
            col = rng.choice(list(dict.fromkeys(column_names(cfg.grid))))
            steps.append(StepClaim("horizontal_position", steps[0].subject, col))
    if kind == "spot_item" and steps[0].negated:
        steps = steps[:1]
    answer = KINDS[kind].answer_of(steps)
    return Question(q.scene, q.slots, steps, answer, q.answer_type, q.options)
