"""Rows of the skills world as Arrow tables: the supporting pool, target-task splits, the general suite,
and the ground-truth functions the evaluator uses.

Every row is a pure function of its seed and index (and the mix and scene settings): the same
arguments give byte-identical rows, PNG bytes included, in any process and in any order, which is
what lets a Ray Data job generate millions of rows in parallel without holding them.

Validation and test rows never share a scene: each scene's digest assigns it to one split
(:func:`split_of_scene`) and each split only keeps its own scenes. The supporting pool is not split:
excluding near-duplicates of evaluation samples from training is the select stage's job.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from edray.schemas import EVAL_SCHEMA, IMAGE_PLACEHOLDER, SUPPORT_SCHEMA
from edray.world.config import SceneConfig
from edray.world.scene import Scene, render_scene
from edray.world.skills import SKILL_NAMES, parse_step, check_step, split_steps
from edray.world.tasks import (
    GENERAL_SUITE,
    SOURCE_TASKS,
    TARGET_TASK_BY_NAME,
    Sample,
    make_eval_sample,
    make_support_sample,
)

SPLITS = ("validation", "test")
EVAL_SPLIT_TRIES = 1000


# --- mix ------------------------------------------------------------------------------------------


def task_weights(mix: Mapping[str, float] | None = None) -> list[float]:
    """Normalized sampling weight of each source task (in :data:`SOURCE_TASKS` order).

    A task's weight is its own entry in ``mix`` (default 1) times the entries of each of its skills
    (default 1). ``{"attribute_binding": 0.01}`` thus makes binding tasks 100 times rarer.

    Args:
        mix: weights keyed by skill or source-task name.

    Returns:
        Weights summing to 1.

    Raises:
        ValueError: an unknown key, a negative weight, or all weights zero.
    """
    mix = dict(mix or {})
    task_names = {t.name for t in SOURCE_TASKS}
    unknown = sorted(k for k in mix if k not in task_names and k not in SKILL_NAMES)
    if unknown:
        raise ValueError(f"mix: unknown skill or task names {unknown}; skills are {list(SKILL_NAMES)}")
    negative = sorted(k for k, v in mix.items() if v < 0)
    if negative:
        raise ValueError(f"mix: negative weights for {negative}")
    weights = []
    for t in SOURCE_TASKS:
        w = float(mix.get(t.name, 1.0))
        for s in t.skills:
            w *= float(mix.get(s, 1.0))
        weights.append(w)
    total = sum(weights)
    if total <= 0:
        raise ValueError("mix: every source task has weight 0")
    return [w / total for w in weights]


def skill_shares(mix: Mapping[str, float] | None = None) -> dict[str, float]:
    """Expected share of pool rows that exercise each skill under a mix (a two-skill task counts for
    both its skills, so shares can sum to more than 1)."""
    shares = dict.fromkeys(SKILL_NAMES, 0.0)
    for t, w in zip(SOURCE_TASKS, task_weights(mix)):
        for s in t.skills:
            shares[s] += w
    return shares


def _cumulative(weights: Sequence[float]) -> list[float]:
    out, acc = [], 0.0
    for w in weights:
        acc += w
        out.append(acc)
    return out


def _mix_tag(mix: Mapping[str, float] | None) -> str:
    if not mix:
        return ""
    return hashlib.sha256(json.dumps(dict(mix), sort_keys=True).encode()).hexdigest()[:8]


# --- rows -----------------------------------------------------------------------------------------


def _messages(sample: Sample) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n{sample.prompt}"},
        {"role": "assistant", "content": sample.response},
    ]


def _metadata(sample: Sample, extra: dict[str, Any]) -> str:
    world = sample.world_metadata()
    world.update(extra)
    return json.dumps({"world": world}, sort_keys=True, separators=(",", ":"))


def generate_support_rows(
    seed: int,
    start: int,
    count: int,
    mix: Mapping[str, float] | None = None,
    scene_config: SceneConfig | None = None,
    blind_skills: Sequence[str] = (),
) -> pa.Table:
    """Rows ``start .. start+count-1`` of the supporting pool.

    Row ``i`` draws its source task from the mix and its question from a random stream seeded by
    ``(seed, i)`` alone, so any slice can be generated independently. The ``skills`` column is NULL
    (the teacher annotates it in the index stage, docs/method.md step 4); the true skills are in
    ``metadata.world.skills``.

    Args:
        seed: pool seed.
        start: first row index.
        count: number of rows.
        mix: weights by skill or source-task name (see :func:`task_weights`).
        scene_config: scene settings (default :class:`SceneConfig`).
        blind_skills: skills whose steps carry no information (the generic student's pretraining rows,
            :func:`edray.world.questions.blind`); empty for the supporting pool.

    Returns:
        A table in ``SUPPORT_SCHEMA``.

    Raises:
        ValueError: negative ``start``/``count`` or an invalid mix.
    """
    if start < 0 or count < 0:
        raise ValueError(f"start and count must be >= 0, got start={start} count={count}")
    cfg = scene_config or SceneConfig()
    cum = _cumulative(task_weights(mix))
    tag = _mix_tag(mix)
    blind = tuple(sorted(set(blind_skills)))
    if blind:
        tag = (tag + "-" if tag else "") + "blind-" + hashlib.sha256(",".join(blind).encode()).hexdigest()[:6]
    cols: dict[str, list[Any]] = {k: [] for k in SUPPORT_SCHEMA.names}
    for i in range(start, start + count):
        rng = random.Random(f"pool:{seed}:{tag}:{i}")
        task = SOURCE_TASKS[min(bisect.bisect_right(cum, rng.random() * cum[-1]), len(SOURCE_TASKS) - 1)]
        sample = make_support_sample(rng, task, cfg, blind)
        cols["id"].append(f"world-{seed}{'-' + tag if tag else ''}-{i}")
        cols["source_task"].append(task.name)
        cols["images"].append([render_scene(sample.question.scene, cfg)])
        cols["messages"].append(_messages(sample))
        cols["skills"].append(None)
        cols["metadata"].append(_metadata(sample, {"index": i}))
    return pa.table(cols, schema=SUPPORT_SCHEMA)


def split_of_scene(scene: Scene) -> str:
    """The evaluation split a scene belongs to (``validation`` or ``test``), from its digest."""
    return SPLITS[int(scene.digest(), 16) % 2]


def generate_eval_rows(
    task: str,
    split: str,
    n: int,
    seed: int,
    scene_config: SceneConfig | None = None,
    form: str = "auto",
) -> pa.Table:
    """``n`` rows of a target task's split, or of the general suite (``task="general"``).

    Args:
        task: a target task name or ``general``.
        split: ``validation`` or ``test``; the two never share a scene.
        n: number of rows.
        seed: evaluation seed.
        scene_config: scene settings (default :class:`SceneConfig`).
        form: ``auto``, ``multiple_choice`` or ``open`` (see :func:`make_eval_sample`).

    Returns:
        A table in ``EVAL_SCHEMA``; ``skills`` holds the task's skills, ``metadata.world`` the
        scene, gold steps and answer.

    Raises:
        ValueError: unknown task or split, or a scene config too small to fill the split.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if task != GENERAL_SUITE and task not in TARGET_TASK_BY_NAME:
        raise ValueError(f"unknown task {task!r}; target tasks: {sorted(TARGET_TASK_BY_NAME)} or {GENERAL_SUITE!r}")
    cfg = scene_config or SceneConfig()
    cols: dict[str, list[Any]] = {k: [] for k in EVAL_SCHEMA.names}
    for i in range(n):
        rng = random.Random(f"eval:{seed}:{task}:{split}:{form}:{i}")
        for _ in range(EVAL_SPLIT_TRIES):
            sample = make_eval_sample(rng, task, cfg, form=form)
            if split_of_scene(sample.question.scene) == split:
                break
        else:
            raise ValueError(f"{task}/{split}: no scene of this split in {EVAL_SPLIT_TRIES} draws")
        cols["id"].append(f"{task}-{split}-{seed}-{i}")
        cols["source_task"].append(sample.task)
        cols["images"].append([render_scene(sample.question.scene, cfg)])
        cols["messages"].append(_messages(sample))
        cols["skills"].append(list(sample.skills))
        cols["metadata"].append(_metadata(sample, {"index": i, "suite": task, "split": split, "choices": sample.choices}))
        cols["answer"].append(sample.answer)
        cols["choices"].append(sample.choices)
        cols["answer_type"].append(sample.answer_type)
        cols["split"].append(split)
    return pa.table(cols, schema=EVAL_SCHEMA)


# --- ground truth ---------------------------------------------------------------------------------


def world_metadata(row: Mapping[str, Any]) -> dict[str, Any]:
    """The ``metadata.world`` dict of a row (a dict with a ``metadata`` JSON string).

    Raises:
        ValueError: the row carries no world ground truth.
    """
    raw = row.get("metadata")
    try:
        world = json.loads(raw)["world"] if raw else None
    except (json.JSONDecodeError, KeyError, TypeError):
        world = None
    if not isinstance(world, dict):
        raise ValueError(f"row {row.get('id')!r}: metadata has no 'world' ground truth")
    return world


def true_skills(row: Mapping[str, Any]) -> list[str]:
    """The skills a world row really exercises (from ``metadata.world``).

    Raises:
        ValueError: the row carries no world ground truth.
    """
    return list(world_metadata(row)["skills"])


def true_error_step(question_row: Mapping[str, Any], steps: str | Sequence[str]) -> int | None:
    """The first of a student's steps that contradicts the row's scene (1-based), or ``None``.

    A step that is not one of the world's step templates counts as erroneous: it cannot be true
    of the scene. Used to score the diagnose stage's step location (docs/method.md section 1, step 2).

    Args:
        question_row: an evaluation row (dict with ``metadata``).
        steps: the student's reply (``Step 1: ...``) or its step texts.

    Returns:
        The 1-based index of the first wrong step, or ``None`` if every step holds.

    Raises:
        ValueError: the row carries no world ground truth.
    """
    scene = Scene.from_dict(world_metadata(question_row)["scene"])
    texts = split_steps(steps)[0] if isinstance(steps, str) else list(steps)
    for k, text in enumerate(texts, 1):
        claim = parse_step(text)
        if claim is None or not check_step(claim, scene):
            return k
    return None


def true_error_skill(question_row: Mapping[str, Any], steps: str | Sequence[str]) -> str | None:
    """The skill of the first wrong step (see :func:`true_error_step`), when it parses; else ``None``."""
    k = true_error_step(question_row, steps)
    if k is None:
        return None
    texts = split_steps(steps)[0] if isinstance(steps, str) else list(steps)
    claim = parse_step(texts[k - 1])
    return claim.skill if claim else None
