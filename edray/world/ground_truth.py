"""How well the stages did on the skills world, scored against the world's ground truth.

The stages never see the ground truth; these checks read the stages' output files afterwards (the
diagnose stage's ``errors.parquet``, the select stage's ``selection.parquet``) and compare them with
the ``metadata.world`` of the rows involved (:mod:`edray.world.pool`). ``bench/diagnose_quality.py``
reports them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from edray.schemas import ERRORS, SELECTION
from edray.world.pool import true_error_skill, true_error_step
from edray.world.skills import skill_of_phrase


def located_step_scores(diagnose_dir: Path, rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Located-step and missing-skill accuracy of a diagnose stage (docs/method.md §1, steps 2-3).

    Args:
        diagnose_dir: a committed diagnose stage folder.
        rows: the validation rows it diagnosed, by id (with their ``metadata``).

    Returns:
        ``errors`` (wrong answers), ``step_accuracy`` (share whose located step is the first step that
        contradicts the scene), ``skill_accuracy`` (share of named skills that map back to that step's
        skill), ``skills_named``, ``methods`` (how steps were located) and ``failures``.

    Raises:
        KeyError: an error's id is not among ``rows``.
        ValueError: a row carries no world ground truth.
    """
    errors = pq.read_table(Path(diagnose_dir) / ERRORS).to_pylist()
    hit = skill_hit = skill_n = 0
    methods: Counter[str] = Counter()
    for e in errors:
        truth = true_error_step(rows[e["id"]], e["steps"])
        hit += int(e["step"] is not None and e["step"] == truth)
        methods[e["method"]] += 1
        if e["skill"]:
            skill_n += 1
            skill_hit += int(skill_of_phrase(e["skill"]) == true_error_skill(rows[e["id"]], e["steps"]))
    return {
        "errors": len(errors),
        "step_accuracy": hit / len(errors) if errors else 0.0,
        "skill_accuracy": skill_hit / skill_n if skill_n else 0.0,
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
