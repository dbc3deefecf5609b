"""The oracle arm's selection: the select stage's file and contract, gap rows only, deterministic per seed."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from edray.schemas import SELECTION, SELECTION_SCHEMA
from edray.world.ground_truth import pool_skill_truth
from edray.world.oracle import GROUND_TRUTH, STRATEGY, write_oracle_selection


def _rows(stage: Path) -> list[dict]:
    table = pq.read_table(stage / SELECTION)
    assert table.schema.equals(SELECTION_SCHEMA)
    return table.to_pylist()


def test_oracle_selection_is_the_select_stage_output(world_dir: Path, tmp_path: Path) -> None:
    gaps = ["attribute_binding", "vertical_position"]
    stage = write_oracle_selection(world_dir, tmp_path / "run" / "round_0" / "select", budget=50, seed=3, gap_skills=gaps)
    assert stage == tmp_path / "run" / "round_0" / "select"
    assert (stage / "_SUCCESS").exists()
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["stage"] == "select" and manifest["config"]["strategy"] == STRATEGY
    assert manifest["counts"]["selected"] == 50 and manifest["counts"]["replay"] == 0
    rows = _rows(stage)
    truth = pool_skill_truth(world_dir / "pool")
    ids = [r["id"] for r in rows]
    assert len(ids) == 50 == len(set(ids))
    assert all(set(truth[i]) & set(gaps) for i in ids)
    for r in rows:
        assert r["source"] == "pool" and r["strategy"] == STRATEGY and r["retrieval_mode"] == GROUND_TRUTH
        assert r["skill"] in gaps and r["gap_id"] == gaps.index(r["skill"]) and r["skill"] in truth[r["id"]]
    # The skills take turns: an even split when both have enough rows.
    assert sorted(r["skill"] for r in rows).count(gaps[0]) == 25
    # Unchanged re-run: skipped, same file.
    finished = manifest["finished_at"]
    write_oracle_selection(world_dir, stage, budget=50, seed=3, gap_skills=gaps)
    assert json.loads((stage / "manifest.json").read_text())["finished_at"] == finished


def test_deterministic_per_seed(world_dir: Path, tmp_path: Path) -> None:
    def ids(seed: int, name: str) -> list[str]:
        return [r["id"] for r in _rows(write_oracle_selection(world_dir, tmp_path / name / "select", 30, seed, ["vertical_position"]))]

    assert ids(0, "a") == ids(0, "b")
    assert ids(0, "a") != ids(1, "c")


def test_shortfall_is_filled_and_marked(world_dir: Path, tmp_path: Path) -> None:
    truth = pool_skill_truth(world_dir / "pool")
    n_gap = sum("vertical_position" in s for s in truth.values())
    stage = write_oracle_selection(world_dir, tmp_path / "select", budget=n_gap + 7, seed=0, gap_skills=["vertical_position"])
    rows = _rows(stage)
    fill = [r for r in rows if r["retrieval_mode"] == "shortfall"]
    assert len(rows) == n_gap + 7 and len(fill) == 7
    assert all("vertical_position" not in truth[r["id"]] for r in fill)
    left = write_oracle_selection(world_dir, tmp_path / "left", budget=n_gap + 7, seed=0, gap_skills=["vertical_position"],
                                  fill_shortfall=False)
    assert len(_rows(left)) == n_gap


def test_bad_arguments(world_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="world skills"):
        write_oracle_selection(world_dir, tmp_path / "s", 10, 0, ["binding"])
    with pytest.raises(ValueError, match="budget"):
        write_oracle_selection(world_dir, tmp_path / "s", 0, 0, ["vertical_position"])
    with pytest.raises(FileNotFoundError, match="no pool"):
        write_oracle_selection(tmp_path / "nowhere", tmp_path / "s", 10, 0, ["vertical_position"])
