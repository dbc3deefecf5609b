"""A student whose mistakes are known: the world's reference steps with one step made false.

The diagnose stage's step location and skill analysis can only be scored against the truth when the
truth is known. A *replay student* answers each validation question with its reference steps, one of
them corrupted (a false claim about the scene, same skill and subject) and a final answer that follows
the false claim. The planted step is then the true erroneous step (:func:`edray.world.pool.true_error_step`
finds it from the scene alone) and its skill the true missing skill. Used by the tests of the diagnose
and select stages against the ground truth and by ``bench/diagnose_quality.py``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator, Collection, Iterable, Mapping
from typing import Any

from edray.serve.engine import ChatRequest, ChatResult, EngineError
from edray.world.pool import world_metadata
from edray.world.scene import COLORS, SHAPES, SIZES, Scene, column_names, row_names
from edray.world.skills import StepClaim, check_step, format_steps, parse_step, render_step


def corrupt_claim(claim: StepClaim, scene: Scene, rng: random.Random) -> StepClaim | None:
    """A claim of the same skill and subject that is false in the scene, or ``None``."""
    s, v = claim.skill, claim.value
    if s == "color_recognition":
        values = [c for c in COLORS if c != v]
    elif s == "shape_recognition":
        values = [x for x in SHAPES if x != v]
    elif s == "size_recognition":
        values = [x for x in SIZES if x != v]
    elif s == "horizontal_position":
        values = [x for g in (2, 3, 4) for x in column_names(g) if x != v]
    elif s == "vertical_position":
        values = [x for g in (2, 3, 4) for x in row_names(g) if x != v]
    elif s in ("object_counting", "counting_by_color", "counting_by_shape"):
        n = int(v) if v.isdigit() else 0
        values = [str(x) for x in (n + 1, n - 1, n + 2) if x >= 0]
    elif s == "count_comparison":
        values = [x for x in ("more", "fewer", "same") if x != v]
    elif s in ("shape_existence", "color_existence", "attribute_binding"):
        flipped = StepClaim(s, claim.subject, v, not claim.negated, claim.other)
        return flipped if not check_step(flipped, scene) else None
    else:
        return None
    rng.shuffle(values)
    for value in dict.fromkeys(values):
        cand = StepClaim(s, claim.subject, value, claim.negated, claim.other)
        if not check_step(cand, scene):
            return cand
    return None


def wrong_answer(row: dict[str, Any], bad: StepClaim, rng: random.Random) -> str:
    """The wrong final answer a student who believed the false claim would give."""
    gold = str(row["answer"])
    step_words = set(render_step(bad).lower().rstrip(".").split())
    if row["answer_type"] == "multiple_choice":
        letters = [chr(65 + i) for i in range(len(row["choices"]))]
        wrong = [i for i, x in enumerate(letters) if x != gold]
        backed = [i for i in wrong if set(str(row["choices"][i]).lower().split()) & step_words]
        return letters[rng.choice(backed or wrong)]
    if row["answer_type"] == "yes_no":
        return "no" if gold == "yes" else "yes"
    if row["answer_type"] == "number":
        if bad.value.isdigit() and bad.value != gold:
            return bad.value
        return str(int(gold) + 1) if gold.isdigit() else "0"
    if bad.value and bad.value != gold and not bad.value.isdigit():
        return bad.value
    pool = [c for c in list(COLORS) + list(SHAPES) + list(SIZES) + list(column_names(2)) + list(row_names(2)) if c != gold]
    return rng.choice(pool)


def corrupted_reply(row: dict[str, Any], seed: int, only_skills: Collection[str] | None = None) -> tuple[str, int] | None:
    """The row's reference steps with one step made false, and that step's index (1-based).

    Args:
        row: a world evaluation row.
        seed: seed of the step chosen and of the false value.
        only_skills: corrupt only steps of these skills (a student whose gaps they are); ``None``: any step.

    Returns:
        ``(reply, step)``, or ``None`` when no eligible step can be made false.
    """
    world = world_metadata(row)
    scene = Scene.from_dict(world["scene"])
    steps = list(world["steps"])
    rng = random.Random(f"{seed}:{row['id']}")
    order = list(range(len(steps)))
    rng.shuffle(order)
    for k in order:
        claim = parse_step(steps[k])
        if claim is None or (only_skills is not None and claim.skill not in only_skills):
            continue
        bad = corrupt_claim(claim, scene, rng)
        if bad is None:
            continue
        new = steps[:k] + [render_step(bad)] + steps[k + 1 :]
        return format_steps(new, wrong_answer(row, bad, rng)), k + 1
    return None


def reply_key(text: str, images: list[bytes]) -> str:
    h = hashlib.sha256(" ".join(text.split()).encode())
    for img in images:
        h.update(hashlib.sha256(img).digest())
    return h.hexdigest()


class ReplayStudent:
    """An engine that answers each known question (text + image) with a fixed reply."""

    def __init__(self, replies: dict[str, str], name: str = "replay-student") -> None:
        self.replies = replies
        self.name = name

    def model_ids(self) -> list[str]:
        return [self.name]

    async def generate(self, request: ChatRequest) -> ChatResult:
        text = " ".join(m["content"] for m in request.messages if m.get("role") == "user")
        reply = self.replies.get(reply_key(text.replace("<image>", " "), request.images))
        if reply is None:
            raise EngineError("replay student: unknown question", 400)
        return ChatResult(text=reply)

    async def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        yield (await self.generate(request)).text


def planted_replies(
    rows: Iterable[Mapping[str, Any]], seed: int, only_skills: Collection[str] | None = None
) -> tuple[dict[str, str], dict[str, int]]:
    """Corrupted replies for evaluation rows, keyed as :class:`ReplayStudent` looks them up.

    Args:
        rows: ``EVAL_SCHEMA`` rows of the world (with ``metadata.world``).
        seed: seed of which step is corrupted and how.
        only_skills: corrupt only steps of these skills (see :func:`corrupted_reply`).

    Returns:
        ``(replies, planted)``: reply key -> reply text, and row id -> the corrupted step (1-based), for
        the rows that have a step that can be made false (the others are left out of both).
    """
    replies: dict[str, str] = {}
    planted: dict[str, int] = {}
    for row in rows:
        made = corrupted_reply(dict(row), seed, only_skills)
        if made is None:
            continue
        text, k = made
        user = " ".join(m["content"] for m in row["messages"] if m["role"] == "user").replace("<image>", " ")
        replies[reply_key(user, list(row["images"]))] = text
        planted[str(row["id"])] = k
    return replies, planted
