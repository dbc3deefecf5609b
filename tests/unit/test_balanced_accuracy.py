"""jobs/experiments/balanced_accuracy.py: a constant answer scores 1 / answers however unbalanced the gold, arms
group over seeds per run, other tasks' rows are left out, and an unfinished run is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.fixtures.scripts import load_script

GOLD = ["more"] * 6 + ["same"] * 3 + ["fewer"]


@pytest.fixture(scope="module")
def balanced():
    return load_script("jobs/experiments/balanced_accuracy.py", "balanced_accuracy")


def _write_run(run: Path, models: dict[str, list[str]], task: str = "outnumber") -> None:
    """A run folder's collected predictions: each model answers GOLD's rows with its list, plus a general row."""
    rows = []
    for model, predictions in models.items():
        rows += [{"model": model, "suite": "target", "task": task, "prediction": p, "gold": g, "correct": p == g}
                 for p, g in zip(predictions, GOLD, strict=True)]  # fmt: skip
        rows.append({"model": model, "suite": "general", "task": "general", "prediction": "x", "gold": "y", "correct": False})
    path = run / "round_0" / "evaluate" / "predictions.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_balanced_accuracy_scores_a_constant_answer_at_chance(balanced) -> None:
    assert balanced.balanced_accuracy(GOLD, [g == "more" for g in GOLD]) == pytest.approx(1 / 3)
    assert balanced.balanced_accuracy(GOLD, [True] * len(GOLD)) == 1.0
    # right on every "same" and "fewer", wrong on half the "more": (0.5 + 1 + 1) / 3
    assert balanced.balanced_accuracy(GOLD, [i % 2 == 0 or g != "more" for i, g in enumerate(GOLD)]) == pytest.approx(2.5 / 3)


def test_groups_arms_over_seeds_per_run(balanced, tmp_path: Path, capsys) -> None:
    _write_run(tmp_path / "outnumber", {"base": ["more"] * 10, "ed-s0": list(GOLD), "ed-s1": ["more"] * 10})
    _write_run(tmp_path / "corner", {"base": ["same"] * 10, "random-s0": ["same"] * 10}, task="corner")

    balanced.main(["outnumber", str(tmp_path / "outnumber"), str(tmp_path / "corner")])
    out = {(e["run"], e["arm"]): e for e in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(out) == {("outnumber", "base"), ("outnumber", "ed")}  # corner's run evaluated another task only
    assert out[("outnumber", "base")]["seeds"] == 1 and out[("outnumber", "base")]["accuracy"]["mean"] == 0.6
    ed = out[("outnumber", "ed")]
    assert ed["seeds"] == 2 and ed["n"] == 10
    assert ed["balanced"] == {"mean": pytest.approx(2 / 3, abs=1e-4), "min": pytest.approx(1 / 3, abs=1e-4), "max": 1.0}
    assert ed["majority_answer"] == "more" and ed["majority_share"] == {"mean": 0.8, "min": 0.6, "max": 1.0}


def test_refuses_unfinished_runs_and_absent_tasks(balanced, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        balanced.main(["outnumber", str(tmp_path / "unfinished")])
    _write_run(tmp_path / "corner", {"base": ["same"] * 10}, task="corner")
    with pytest.raises(SystemExit):
        balanced.main(["outnumber", str(tmp_path / "corner")])
