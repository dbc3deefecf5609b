"""The oracle arm's selection: pool rows that exercise the true gap skills, read from the world's ground truth.

An arm trained on it bounds what any selection of the same budget can reach (check (e) of
:mod:`edray.world.checks`: if the oracle does not beat random, the recipe cannot show the method
either). The file is the select stage's output (``selection.parquet`` in ``SELECTION_SCHEMA``, committed
with ``manifest.json`` and ``_SUCCESS``), so the train stage reads it like any other selection.

Command-free by design: the arm runner (or a user) calls :func:`write_oracle_selection`, then trains::

    from edray.world.oracle import write_oracle_selection
    write_oracle_selection("runs/w/world", "runs/w/arms/oracle/round_0/select", budget=120, seed=0)
    edray train --selection runs/w/arms/oracle/round_0/select/selection.parquet --pool runs/w/world/pool ...
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq

from edray.rundir import Stage, StageDir, run_stage
from edray.schemas import SELECTION, WORLD_POOL_DIR
from edray.select import core as select_core
from edray.select.job import SHORTFALL
from edray.world.pool import true_skills
from edray.world.skills import SKILL_NAMES

STRATEGY = "oracle"
# retrieval_mode of the oracle's rows: their provenance is the world's ground truth, not a retriever.
GROUND_TRUTH = "world_ground_truth"


def pick_gap_rows(
    pool_truth: dict[str, list[str]], gap_skills: Sequence[str], budget: int, seed: int, fill_shortfall: bool = True
) -> list[select_core.Pick]:
    """Up to ``budget`` pool rows exercising the gap skills, the skills taking turns.

    Each gap skill's rows are shuffled with ``seed`` (ids sorted first, so the pool's row order does
    not matter); the skills then take turns, a row already taken being skipped, until the budget is
    filled or every list is spent. With ``fill_shortfall`` the rest of the budget is drawn uniformly
    from the other rows, as the select stage fills a retrieval shortfall.

    Returns:
        Picks whose ``gap`` is the skill (or ``shortfall``) and ``rank`` the position in its list.
    """
    rng = random.Random(f"oracle:{seed}")
    lists: list[list[str]] = []
    for skill in gap_skills:
        ids = sorted(i for i, skills in pool_truth.items() if skill in skills)
        rng.shuffle(ids)
        lists.append(ids)
    picks: list[select_core.Pick] = []
    taken: set[str] = set()
    cursors = [0] * len(lists)
    while len(picks) < budget and any(c < len(ids) for c, ids in zip(cursors, lists)):
        for k, ids in enumerate(lists):
            while cursors[k] < len(ids) and ids[cursors[k]] in taken:
                cursors[k] += 1
            if cursors[k] < len(ids) and len(picks) < budget:
                picks.append(select_core.Pick(ids[cursors[k]], gap_skills[k], None, cursors[k] + 1))
                taken.add(ids[cursors[k]])
                cursors[k] += 1
    short = budget - len(picks)
    if short > 0 and fill_shortfall:
        rest = sorted(i for i in pool_truth if i not in taken)
        picks += [select_core.Pick(i, SHORTFALL, None, None) for i in rng.sample(rest, min(short, len(rest)))]
    return picks


def write_oracle_selection(
    world_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    budget: int,
    seed: int,
    gap_skills: Sequence[str] | None = None,
    round_index: int = 0,
    fill_shortfall: bool = True,
    force: bool = False,
) -> Path:
    """Write the oracle arm's selection into ``out_dir`` (a select stage folder) unless it is current.

    Args:
        world_dir: a world folder (``pool/`` with ``metadata.world`` ground truth).
        out_dir: the stage folder to write, e.g. ``<run>/arms/oracle/round_0/select``.
        budget: rows to select.
        seed: seed of which gap rows are drawn (the same seed gives the same file).
        gap_skills: the skills whose rows to pick (default: the default pretraining mix's gaps).
        round_index: the ``round`` column's value.
        fill_shortfall: fill the budget with uniform draws when the pool holds too few gap rows.
        force: rewrite even if a committed selection with the same settings and pool exists.

    Returns:
        The stage folder (``selection.parquet``, ``manifest.json``, ``_SUCCESS``).

    Raises:
        ValueError: an unknown skill, no gap skill, or a budget below 1.
        FileNotFoundError: the world has no pool.
    """
    if gap_skills is None:
        from edray.world.checks import designed_gap_skills

        gap_skills = designed_gap_skills()[0]
    skills = list(dict.fromkeys(gap_skills))
    unknown = [s for s in skills if s not in SKILL_NAMES]
    if unknown or not skills:
        raise ValueError(f"gap_skills must be world skills, got {list(gap_skills)}; skills: {', '.join(SKILL_NAMES)}")
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    pool = Path(world_dir) / WORLD_POOL_DIR
    if not pool.exists():
        raise FileNotFoundError(f"no pool at {pool} (generate a world with `edray world generate`)")
    out = Path(out_dir)
    config = {"strategy": STRATEGY, "budget": budget, "seed": seed, "gap_skills": skills, "round": round_index,
              "fill_shortfall": fill_shortfall, "world_dir": str(world_dir)}
    stage = Stage(StageDir(out.parent, out.name), config, inputs=[pool])

    def compute(tmp: Path) -> None:
        truth = {r["id"]: true_skills(r) for r in pq.read_table(pool, columns=["id", "metadata"]).to_pylist()}
        picks = pick_gap_rows(truth, skills, budget, seed, fill_shortfall)
        provenance = {
            s: select_core.Provenance(k, s, [], f"world ground truth: {s}", GROUND_TRUTH) for k, s in enumerate(skills)
        }
        provenance[SHORTFALL] = select_core.Provenance(None, None, [], None, SHORTFALL)
        table = select_core.selection_table(picks, provenance, STRATEGY, round_index)
        pq.write_table(table, tmp / SELECTION)
        per_skill = {s: sum(p.gap == s for p in picks) for s in skills}
        stage.dir.counts.update({"pool": len(truth), "budget": budget, "selected": table.num_rows, "targeted": table.num_rows,
                                 "shortfall_fill": sum(p.gap == SHORTFALL for p in picks), "replay": 0})
        stage.dir.metrics.update({"per_unit": per_skill})

    return run_stage(stage, compute, force=force)
