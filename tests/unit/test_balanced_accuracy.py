"""jobs/experiments/balanced_accuracy.py: a constant answer scores 1 / answers however unbalanced the gold, arms
group over seeds, and every evaluation folder of a run (its own round, its arms, the base) is read once."""

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


def _write(path: Path, model: str, predictions: list[str], task: str = "outnumber") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"model": model, "suite": "target", "task": task, "prediction": p, "gold": g, "correct": p == g}
            for p, g in zip(predictions, GOLD, strict=True)]  # fmt: skip
    rows.append({"model": model, "suite": "general", "task": "general", "prediction": "x", "gold": "y", "correct": False})
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_balanced_accuracy_scores_a_constant_answer_at_chance(balanced) -> None:
    assert balanced.balanced_accuracy(GOLD, [g == "more" for g in GOLD]) == pytest.approx(1 / 3)
    assert balanced.balanced_accuracy(GOLD, [True] * len(GOLD)) == 1.0
    # right on every "same" and "fewer", wrong on half the "more": (0.5 + 1 + 1) / 3
    assert balanced.balanced_accuracy(GOLD, [i % 2 == 0 or g != "more" for i, g in enumerate(GOLD)]) == pytest.approx(2.5 / 3)


def test_groups_arms_over_seeds_across_a_runs_folders(balanced, tmp_path: Path, capsys) -> None:
    run = tmp_path / "outnumber"
    _write(run / "round_0" / "evaluate_base" / "predictions.parquet", "base", ["more"] * 10)
    _write(run / "round_0" / "evaluate_arm" / "predictions.parquet", "ed-s0", list(GOLD))
    _write(run / "arms" / "ed-s1" / "round_0" / "evaluate_arm" / "predictions.parquet", "ed-s1", ["more"] * 10)
    _write(run / "arms" / "ed-s2" / "round_0" / "evaluate_base" / "predictions.parquet", "base", ["fewer"] * 10)  # a second copy
    _write(tmp_path / "corner" / "round_0" / "evaluate_arm" / "predictions.parquet", "random-s0", ["same"] * 10, task="corner")

    balanced.main(["outnumber", str(run), str(tmp_path / "corner")])
    out = {e["arm"]: e for e in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(out) == {"base", "ed"}  # corner's arm was evaluated on another task only
    assert out["base"]["seeds"] == 1 and out["base"]["accuracy"]["mean"] == 0.6  # the first copy, counted once
    assert out["ed"]["seeds"] == 2 and out["ed"]["n"] == 10
    assert out["ed"]["balanced"] == {"mean": pytest.approx(2 / 3, abs=1e-4), "min": pytest.approx(1 / 3, abs=1e-4), "max": 1.0}
    assert out["ed"]["majority_answer"] == "more" and out["ed"]["majority_share"]["max"] == 1.0


def test_refuses_folders_without_the_tasks_predictions(balanced, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        balanced.main(["outnumber", str(tmp_path)])
    with pytest.raises(SystemExit):
        balanced.main(["outnumber", str(tmp_path / "absent")])
