"""How well the stages did on the skills world, scored against the world's ground truth.

The stages never see the ground truth; these checks read the stages' output files afterwards (the
diagnose stage's ``errors.parquet``, the select stage's ``selection.parquet``) and compare them with
the ``metadata.world`` of the rows involved (:mod:`edray.world.pool`). ``bench/diagnose_quality.py``
reports them, and :mod:`edray.world.checks` turns them into the checks a world run must pass.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from edray.schemas import ANSWERS, ERRORS, SELECTION
from edray.select.job import REPLAY, SHORTFALL
from edray.world.pool import true_error_skill, true_error_step, true_skills
from edray.world.skills import skill_of_phrase
from edray.world.student_eval import is_well_formed


def located_step_scores(diagnose_dir: Path, rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Located-step and missing-skill accuracy of a diagnose stage (docs/method.md §1, steps 2-3).

    Args:
        diagnose_dir: a committed diagnose stage folder.
        rows: the validation rows it diagnosed, by id (with their ``metadata``).

    Returns:
        ``errors`` (wrong answers), ``step_accuracy`` (share whose located step is the first step that
        contradicts the scene), ``skill_accuracy`` (share of named skills that map back to that step's
        skill), ``joint_accuracy`` (share of all errors with both the step and a named skill right),
        ``skills_named``, ``methods`` (how steps were located) and ``failures``.

    Raises:
        KeyError: an error's id is not among ``rows``.
        ValueError: a row carries no world ground truth.
    """
    errors = pq.read_table(Path(diagnose_dir) / ERRORS).to_pylist()
    hit = skill_hit = skill_n = joint = 0
    methods: Counter[str] = Counter()
    for e in errors:
        truth = true_error_step(rows[e["id"]], e["steps"])
        step_ok = e["step"] is not None and e["step"] == truth
        hit += int(step_ok)
        methods[e["method"]] += 1
        if e["skill"]:
            skill_n += 1
            skill_ok = skill_of_phrase(e["skill"]) == true_error_skill(rows[e["id"]], e["steps"])
            skill_hit += int(skill_ok)
            joint += int(step_ok and skill_ok)
    return {
        "errors": len(errors),
        "step_accuracy": hit / len(errors) if errors else 0.0,
        "skill_accuracy": skill_hit / skill_n if skill_n else 0.0,
        "joint_accuracy": joint / len(errors) if errors else 0.0,
        "skills_named": skill_n,
        "methods": dict(methods),
        "failures": sum(e["failure"] is not None for e in errors),
    }


def selection_precision(
    select_dir: Path, pool_truth: Mapping[str, list[str]], gap_truth: Mapping[int, set[str]], all_truth: set[str]
) -> dict[str, Any]:
    """Share of a select stage's samples that exercise the skill their gap is missing.

    Args:
        select_dir: a committed select stage folder.
        pool_truth: pool row id -> the skills it really exercises.
        gap_truth: gap id -> the true skills of the errors grouped into that gap.
        all_truth: the true skills of every diagnosed error.

    Returns:
        ``selected``, ``precision_gap`` (samples whose skills meet their own gap's true skills; a
        sample without a gap counts against ``all_truth``) and ``precision_any`` (samples whose skills
        meet any diagnosed error's skill).
    """
    sel = pq.read_table(Path(select_dir) / SELECTION).to_pylist()
    gap_hits = any_hits = 0
    for r in sel:
        skills = set(pool_truth.get(r["id"], []))
        any_hits += int(bool(skills & all_truth))
        target = gap_truth.get(r["gap_id"], all_truth) if r["gap_id"] is not None else all_truth
        gap_hits += int(bool(skills & target))
    n = len(sel)
    return {"selected": n, "precision_gap": gap_hits / n if n else 0.0, "precision_any": any_hits / n if n else 0.0}


def error_profile(diagnose_dir: Path, rows: Mapping[str, Mapping[str, Any]], gap_skills: Collection[str]) -> dict[str, Any]:
    """What the student's wrong answers look like, against the world's ground truth.

    Args:
        diagnose_dir: a committed diagnose stage folder (``answers.parquet``, ``errors.parquet``).
        rows: the validation rows it diagnosed, by id.
        gap_skills: the student's designed gap skills.

    Returns:
        ``errors``, ``well_formed`` (share of the errors' replies that read ``Step k:`` lines then
        ``Answer:``), ``mean_steps`` (steps per erroneous reply), ``gap_share`` (share of errors whose
        true erroneous skill is a gap skill) and ``true_skills`` (true erroneous skill -> errors;
        ``none`` when every step holds and only the answer is wrong, ``unparsed`` when the first wrong
        step is not a step of the world's language).

    Raises:
        KeyError: an error's id is not among ``rows``.
    """
    responses = {a["id"]: a["response"] for a in pq.read_table(Path(diagnose_dir) / ANSWERS, columns=["id", "response"]).to_pylist()}
    errors = pq.read_table(Path(diagnose_dir) / ERRORS, columns=["id", "steps"]).to_pylist()
    skills: Counter[str] = Counter()
    formed = steps = 0
    for e in errors:
        formed += int(is_well_formed(responses.get(e["id"])))
        steps += len(e["steps"])
        if true_error_step(rows[e["id"]], e["steps"]) is None:
            skills["none"] += 1
        else:
            skills[true_error_skill(rows[e["id"]], e["steps"]) or "unparsed"] += 1
    n = len(errors)
    return {
        "errors": n,
        "well_formed": formed / n if n else 0.0,
        "mean_steps": steps / n if n else 0.0,
        "gap_share": sum(skills[s] for s in gap_skills) / n if n else 0.0,
        "true_skills": dict(sorted(skills.items())),
    }


def pool_skill_truth(pool: Path) -> dict[str, list[str]]:
    """Pool row id -> the skills it really exercises, from ``metadata.world`` (a Parquet file or folder).

    Raises:
        ValueError: a row carries no world ground truth.
    """
    return {r["id"]: true_skills(r) for r in pq.read_table(pool, columns=["id", "metadata"]).to_pylist()}


def precision_at_budget(select_dir: Path, pool_truth: Mapping[str, list[str]], gap_skills: Collection[str]) -> dict[str, Any]:
    """Share of a selection's targeted rows that exercise a true gap skill (replay rows left out).

    Rows the select stage drew as replay (``retrieval_mode == "replay"``) are not targeted; rows that
    filled a retrieval shortfall are, since they stand in for targeted rows the method could not find.

    Args:
        select_dir: a committed select stage folder (or any folder holding a ``selection.parquet``).
        pool_truth: pool row id -> its true skills (:func:`pool_skill_truth`).
        gap_skills: the gap skills that count as hits.

    Returns:
        ``strategy`` (the selection's strategy column, ``mixed`` if several), ``query`` (what the select
        stage's manifest says it queried with, ``skill`` or ``step``; None without a manifest), ``selected``,
        ``targeted``, ``replay``, ``shortfall``, ``gap_rows`` (targeted rows with a gap skill),
        ``precision`` (``gap_rows / targeted``), ``per_skill`` (gap skill -> targeted rows exercising
        it) and ``unknown`` (ids missing from ``pool_truth``, counted as misses).
    """
    rows = pq.read_table(Path(select_dir) / SELECTION, columns=["id", "strategy", "retrieval_mode"]).to_pylist()
    gaps = set(gap_skills)
    targeted = [r for r in rows if r["retrieval_mode"] != REPLAY]
    per_skill: Counter[str] = Counter()
    hits = unknown = 0
    for r in targeted:
        truth = pool_truth.get(r["id"])
        if truth is None:
            unknown += 1
            continue
        found = gaps.intersection(truth)
        hits += int(bool(found))
        per_skill.update(found)
    strategies = {r["strategy"] for r in rows}
    return {
        "strategy": strategies.pop() if len(strategies) == 1 else ("mixed" if strategies else None),
        "query": _selection_query(Path(select_dir)),
        "selected": len(rows),
        "targeted": len(targeted),
        "replay": len(rows) - len(targeted),
        "shortfall": sum(r["retrieval_mode"] == SHORTFALL for r in rows),
        "gap_rows": hits,
        "precision": hits / len(targeted) if targeted else 0.0,
        "per_skill": {s: per_skill[s] for s in sorted(gaps)},
        "unknown": unknown,
    }


def _selection_query(select_dir: Path) -> str | None:
    try:
        return json.loads((select_dir / "manifest.json").read_text()).get("config", {}).get("query")
    except (OSError, ValueError):
        return None


def gap_share(pool_truth: Mapping[str, list[str]], gap_skills: Collection[str]) -> float:
    """Share of pool rows that exercise at least one gap skill: what a uniform draw's precision is."""
    gaps = set(gap_skills)
    return sum(bool(gaps.intersection(s)) for s in pool_truth.values()) / len(pool_truth) if pool_truth else 0.0
