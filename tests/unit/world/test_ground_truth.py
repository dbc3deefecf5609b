"""World ground-truth scores of the stages' output files, against hand-computed values."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edray.schemas import ERRORS, SELECTION
from edray.world.ground_truth import located_step_scores, selection_precision
from edray.world.pool import generate_eval_rows


def test_located_step_scores(tmp_path):
    row = generate_eval_rows("spot_item", "validation", 1, seed=3).to_pylist()[0]
    gold = json.loads(row["metadata"])["world"]["steps"]
    assert len(gold) >= 2
    # The second step is not a claim of the world's step language, so it is the first wrong step.
    steps = [gold[0], "Step nonsense that no scene makes true.", *gold[2:]]
    errors = [
        {"id": row["id"], "steps": steps, "step": 2, "method": "answer_switch", "skill": None, "failure": None},
        {"id": row["id"], "steps": steps, "step": 1, "method": "fallback_first", "skill": None, "failure": "HTTP 503"},
        {"id": row["id"], "steps": steps, "step": None, "method": "answer_switch", "skill": None, "failure": None},
    ]
    pq.write_table(pa.Table.from_pylist(errors), tmp_path / ERRORS)
    got = located_step_scores(tmp_path, {row["id"]: row})
    assert got["errors"] == 3 and got["step_accuracy"] == pytest.approx(1 / 3)
    assert got["methods"] == {"answer_switch": 2, "fallback_first": 1} and got["failures"] == 1
    assert got["skills_named"] == 0 and got["skill_accuracy"] == 0.0


def test_selection_precision(tmp_path):
    selection = [{"id": "p1", "gap_id": 0}, {"id": "p2", "gap_id": 0}, {"id": "p3", "gap_id": 1}, {"id": "p4", "gap_id": None}]
    pq.write_table(pa.Table.from_pylist(selection), tmp_path / SELECTION)
    pool_truth = {"p1": ["binding"], "p2": ["color"], "p3": ["binding"], "p4": ["position"]}
    gap_truth = {0: {"binding"}, 1: {"position"}}
    got = selection_precision(tmp_path, pool_truth, gap_truth, {"binding", "position"})
    # p1 meets gap 0; p2 meets nothing; p3 misses gap 1 but meets "any"; p4 (no gap) meets all_truth.
    assert got == {"selected": 4, "precision_gap": 0.5, "precision_any": 0.75}


def test_error_profile_tells_gap_errors_from_unparsed_and_answer_only_errors(tmp_path):
    import json as _json

    from edray.schemas import ANSWERS
    from edray.world.ground_truth import error_profile

    rows = generate_eval_rows("corner", "validation", 3, seed=3).to_pylist()
    gold = [_json.loads(r["metadata"])["world"]["steps"] for r in rows]
    # Row 0: every step holds (only the answer is wrong); row 1: an unparseable first step;
    # row 2: the first step (vertical position) contradicted by swapping the row name.
    bad = gold[2][0].replace("top", "TMP").replace("bottom", "top").replace("TMP", "bottom")
    assert bad != gold[2][0]
    steps = [gold[0], ["Something vague.", gold[1][1]], [bad, gold[2][1]]]
    replies = ["\n".join(f"Step {i}: {s}" for i, s in enumerate(st, 1)) + "\nAnswer: Z" for st in steps]
    replies[1] = "Step 1 Something vague."  # not well formed either
    pq.write_table(pa.Table.from_pylist([{"id": r["id"], "response": t} for r, t in zip(rows, replies)]), tmp_path / ANSWERS)
    pq.write_table(pa.Table.from_pylist([{"id": r["id"], "steps": st} for r, st in zip(rows, steps)]), tmp_path / ERRORS)
    got = error_profile(tmp_path, {r["id"]: r for r in rows}, ["vertical_position"])
    assert got["true_skills"] == {"none": 1, "unparsed": 1, "vertical_position": 1}
    assert got["gap_share"] == pytest.approx(1 / 3) and got["well_formed"] == pytest.approx(2 / 3)
    assert got["mean_steps"] == 2.0 and got["errors"] == 3
