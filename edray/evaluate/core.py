"""Pure pieces of the evaluate stage: prompts, scoring replies, accuracy tables, retention, combined score.

Nothing here touches disk, Ray or a model. Prompts, step parsing and answer scoring are the diagnose
stage's (:mod:`edray.diagnose.core`, :mod:`edray.diagnose.scoring`), so an answer counts as correct here
exactly when diagnose would count it correct.

Definitions (docs/evaluate.md):
    accuracy  = mean of ``correct`` over the rows of a group;
    stderr    = sqrt(p (1 − p) / n), the binomial standard error of that mean;
    retention = general accuracy of a model / general accuracy of the base model, capped at 1 unless
                configured otherwise (undefined when the base scores 0 on the general suite);
    combined  = harmonic mean of target accuracy and retention (0 when either is 0).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from edray.diagnose import core as diagnose_core
from edray.diagnose.scoring import score_answer
from edray.schemas import SCORE_ALL

# --- prompts and scoring -----------------------------------------------------------------------------


def render_prompt(row: Mapping[str, Any], template: str) -> str:
    """The student's prompt for an evaluation row, without image placeholders (images travel apart).

    Args:
        row: an ``EVAL_SCHEMA`` row (``messages``, ``choices``).
        template: the step-by-step template (fields ``{question}``, ``{options}``).

    Returns:
        The prompt text.
    """
    question = diagnose_core.question_text(row["messages"])
    return diagnose_core.strip_images(diagnose_core.render_student_prompt(template, question, row.get("choices")))


def row_skills(row: Mapping[str, Any], source: str = "world") -> list[str]:
    """The skills a row is credited to in the per-skill breakdown.

    Args:
        row: an ``EVAL_SCHEMA`` row.
        source: ``world`` prefers the ground truth ``metadata["world"]["skills"]``; ``row`` uses the
            ``skills`` column only.

    Returns:
        Sorted, de-duplicated skill names; empty when the row names none.
    """
    if source == "world" and row.get("metadata"):
        try:
            meta = json.loads(row["metadata"])
        except (TypeError, json.JSONDecodeError):
            meta = None
        world = meta.get("world") if isinstance(meta, dict) else None
        if isinstance(world, dict) and isinstance(world.get("skills"), list) and world["skills"]:
            return sorted({str(s) for s in world["skills"]})
    return sorted({str(s) for s in (row.get("skills") or [])})


def score_reply(
    row: Mapping[str, Any],
    text: str | None,
    failure: str | None,
    scorer_by_type: Mapping[str, str],
    abs_tol: float = 1e-6,
    rel_tol: float = 0.0,
    correct_threshold: float = 1.0,
) -> dict[str, Any]:
    """Parse a reply into its final answer and score it against the row's gold answer.

    Args:
        row: the ``EVAL_SCHEMA`` row answered.
        text: the model's reply (``None`` when the call failed).
        failure: why there is no reply, if so; a failed call is never correct.
        scorer_by_type: answer type → scorer name (the diagnose stage's scorers).
        abs_tol: absolute tolerance of the numeric scorer.
        rel_tol: relative tolerance of the numeric scorer.
        correct_threshold: a score at or above this counts as correct.

    Returns:
        ``{"response", "prediction", "score", "correct", "failure"}``.
    """
    _, prediction = diagnose_core.parse_steps(text)
    score = 0.0
    if failure is None:
        score = float(
            score_answer(
                prediction, str(row["answer"]), row["answer_type"], row.get("choices"), dict(scorer_by_type),
                abs_tol=abs_tol, rel_tol=rel_tol,
            )
        )
    return {
        "response": text,
        "prediction": prediction,
        "score": score,
        "correct": failure is None and score >= correct_threshold,
        "failure": failure,
    }


# --- accuracy tables ---------------------------------------------------------------------------------


def binomial_stderr(correct: int, n: int) -> float:
    """Standard error of an accuracy ``correct / n``: sqrt(p (1 − p) / n).

    Raises:
        ValueError: ``n`` is not positive or ``correct`` is outside [0, n].
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= correct <= n:
        raise ValueError(f"correct must lie in [0, {n}], got {correct}")
    p = correct / n
    return math.sqrt(p * (1.0 - p) / n)


def accuracy_table(predictions: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Accuracy per (model, suite) overall, per task, per skill, and per task × skill.

    A row crediting several skills counts once toward each of them; rows without skills count only
    toward the task and overall groups. ``task`` / ``skill`` hold :data:`SCORE_ALL` on aggregated rows.

    Args:
        predictions: rows with ``model``, ``arm``, ``suite``, ``task``, ``skills``, ``correct``.

    Returns:
        Rows of ``EVAL_SCORES_SCHEMA``, sorted by model, suite, task, skill.
    """
    tally: dict[tuple[str, str, str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for p in predictions:
        ok = 1 if p["correct"] else 0
        keys = [(SCORE_ALL, SCORE_ALL), (p["task"], SCORE_ALL)]
        for skill in sorted(set(p.get("skills") or [])):
            keys += [(SCORE_ALL, skill), (p["task"], skill)]
        for task, skill in keys:
            t = tally[(p["model"], p["arm"], p["suite"], task, skill)]
            t[0] += ok
            t[1] += 1
    rows = []
    for (model, arm, suite, task, skill), (k, n) in sorted(tally.items()):
        rows.append(
            {
                "model": model, "arm": arm, "suite": suite, "task": task, "skill": skill,
                "n": n, "accuracy": k / n, "stderr": binomial_stderr(k, n),
            }
        )  # fmt: skip
    return rows


def harmonic_mean(a: float, b: float) -> float:
    """2ab / (a + b); 0 when either is 0 (or both).

    Raises:
        ValueError: a negative input.
    """
    if a < 0 or b < 0:
        raise ValueError(f"harmonic mean of non-negative numbers only, got {a}, {b}")
    if a == 0 or b == 0:
        return 0.0
    return 2.0 * a * b / (a + b)


def retention(general: float, base_general: float, cap: bool = True) -> float | None:
    """General accuracy relative to the base model's; ``None`` when the base scores 0.

    Args:
        general: the model's general-suite accuracy.
        base_general: the base model's general-suite accuracy.
        cap: clip at 1 (a general-suite gain does not count as more than full retention).
    """
    if base_general <= 0:
        return None
    r = general / base_general
    return min(1.0, r) if cap else r


@dataclass
class ModelSummary:
    """The headline numbers of one model."""

    model: str
    arm: str
    target_accuracy: float | None
    target_stderr: float | None
    target_n: int
    general_accuracy: float | None
    general_stderr: float | None
    general_n: int
    target_gain: float | None
    retention: float | None
    combined: float | None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict."""
        return asdict(self)


def summarize(
    scores: Sequence[Mapping[str, Any]], base: str, cap_retention: bool = True, task: str | None = None
) -> list[ModelSummary]:
    """Target accuracy, general accuracy, target gain, retention and combined score per model.

    Args:
        scores: rows of :func:`accuracy_table`.
        base: the base model's name (retention and gain are relative to it).
        cap_retention: clip retention at 1.
        task: read the target suite's accuracy of this task only (models evaluated on several target
            tasks); None: all target rows.

    Returns:
        One summary per model; the base first, then the others by name.

    Raises:
        ValueError: ``base`` has no rows in ``scores``.
    """
    overall: dict[tuple[str, str], Mapping[str, Any]] = {}
    arms: dict[str, str] = {}
    for s in scores:
        arms[s["model"]] = s["arm"]
        if s["skill"] != SCORE_ALL:
            continue
        wanted = task if task is not None and s["suite"] == "target" else SCORE_ALL
        if s["task"] == wanted:
            overall[(s["model"], s["suite"])] = s
    if base not in arms:
        raise ValueError(f"base model {base!r} has no scores")
    base_t, base_g = overall.get((base, "target")), overall.get((base, "general"))
    out = []
    for model in [base] + sorted(m for m in arms if m != base):
        t, g = overall.get((model, "target")), overall.get((model, "general"))
        ret = retention(g["accuracy"], base_g["accuracy"], cap_retention) if g and base_g else None
        combined = harmonic_mean(t["accuracy"], ret) if t is not None and ret is not None else None
        out.append(
            ModelSummary(
                model=model,
                arm=arms[model],
                target_accuracy=t["accuracy"] if t else None,
                target_stderr=t["stderr"] if t else None,
                target_n=int(t["n"]) if t else 0,
                general_accuracy=g["accuracy"] if g else None,
                general_stderr=g["stderr"] if g else None,
                general_n=int(g["n"]) if g else 0,
                target_gain=(t["accuracy"] - base_t["accuracy"]) if t and base_t else None,
                retention=ret,
                combined=combined,
            )
        )
    return out
