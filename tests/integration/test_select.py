"""The select stage end to end on a small skills world: a real index (LanceDB, BM25 + vectors), a real
diagnose stage (the world student in process, the world teacher), every retrieval mode and baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edray.schemas import EVAL_SCHEMA, SELECTION, SELECTION_SCHEMA

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def diagnosed(pipeline_index: Path, pipeline_world, student_dir: Path) -> Path:
    """The pipeline run with a completed round-0 diagnose stage."""
    from edray.diagnose import job
    from edray.diagnose.config import DiagnoseConfig
    from edray.diagnose.inprocess import EngineClient
    from edray.serve.transformers_engine import TransformersEngine
    from edray.world.config import TeacherConfig
    from edray.world.teacher import WorldTeacher

    cfg = DiagnoseConfig.model_validate(
        {"validation": str(pipeline_world.validation), "student": {"family": "plain", "max_tokens": 24}}
    )
    student = EngineClient(TransformersEngine("student", str(student_dir), torch_threads=1), "student")
    teacher = EngineClient(WorldTeacher(TeacherConfig(model_id="teacher")), "teacher")
    job.run(cfg, pipeline_index, student=student, teacher=teacher)
    return pipeline_index


def _select(run_dir: Path, tmp: Path, **fields) -> tuple[Path, list[dict], dict]:
    from edray.select import job
    from edray.select.config import SelectConfig

    cfg = SelectConfig.model_validate(
        {"index_dir": str(run_dir / "index"), "diagnose_dir": str(run_dir / "round_0" / "diagnose"), **fields}
    )
    path = job.run(cfg, tmp)
    table = pq.read_table(path / SELECTION)
    assert table.schema.equals(SELECTION_SCHEMA)
    return path, table.to_pylist(), json.loads((path / "manifest.json").read_text())


def _pool_ids(pipeline_world) -> set[str]:
    return set(pq.read_table(pipeline_world.pool).column("id").to_pylist())


@pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid"])
def test_error_driven_selection_with_provenance(diagnosed: Path, pipeline_world, tmp_path: Path, mode: str) -> None:
    gaps = pq.read_table(diagnosed / "round_0" / "diagnose" / "gaps.parquet").to_pylist()
    errors = {e["error_id"] for e in pq.read_table(diagnosed / "round_0" / "diagnose" / "errors.parquet").to_pylist()}
    assert gaps, "the diagnose stage found no capability gap"
    path, rows, manifest = _select(diagnosed, tmp_path, mode=mode, budget=60)
    ids = [r["id"] for r in rows]
    assert len(ids) == 60 == len(set(ids))
    assert set(ids) <= _pool_ids(pipeline_world)
    targeted = [r for r in rows if r["gap_id"] is not None]
    assert targeted and manifest["counts"]["targeted"] == len(targeted)
    gap_skill = {g["gap_id"]: g["skill"] for g in gaps}
    for r in targeted:
        assert r["retrieval_mode"] == mode and r["strategy"] == "error_driven" and r["source"] == "pool"
        assert r["skill"] == gap_skill[r["gap_id"]] and r["query"] == r["skill"]
        assert r["error_ids"] and set(r["error_ids"]) <= errors
        assert r["score"] is not None and r["rank"] >= 1
    # Within a gap, selection follows the retriever's ranking.
    for gap_id in {r["gap_id"] for r in targeted}:
        ranks = [r["rank"] for r in targeted if r["gap_id"] == gap_id]
        assert ranks == sorted(ranks)


def test_budget_allocation_replay_and_rerun(diagnosed: Path, tmp_path: Path) -> None:
    path, rows, manifest = _select(diagnosed, tmp_path, budget=40, replay_share=0.5, mode="bm25")
    replay = [r for r in rows if r["retrieval_mode"] == "replay"]
    assert len(rows) == 40 and len(replay) == 20 == manifest["counts"]["replay"]
    assert all(r["gap_id"] is None and r["error_ids"] == [] for r in replay)
    # Unchanged re-run: skipped, the committed output is untouched.
    finished = manifest["finished_at"]
    _, _, again = _select(diagnosed, tmp_path, budget=40, replay_share=0.5, mode="bm25")
    assert again["finished_at"] == finished
    # A budget as a fraction of the pool.
    _, rows, manifest = _select(diagnosed, tmp_path / "frac", budget=None, budget_fraction=0.05, mode="bm25")
    assert len(rows) == manifest["counts"]["budget"] == round(0.05 * manifest["counts"]["pool"])


@pytest.mark.parametrize("strategy", ["random", "insta", "validation"])
def test_baselines_at_the_same_budget(diagnosed: Path, pipeline_world, tmp_path: Path, strategy: str) -> None:
    path, rows, manifest = _select(diagnosed, tmp_path, strategy=strategy, budget=30)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    assert all(r["strategy"] == strategy for r in rows)
    if strategy == "validation":
        val_ids = set(pq.read_table(pipeline_world.validation).column("id").to_pylist())
        assert set(ids) == val_ids and all(r["source"] == "validation" for r in rows)
    else:
        assert len(ids) == 30 and set(ids) <= _pool_ids(pipeline_world)
    if strategy == "insta":
        scores = [r["score"] for r in rows]
        assert scores == sorted(scores, reverse=True)


def test_contamination_guard_excludes_planted_duplicates(diagnosed: Path, pipeline_world, tmp_path: Path) -> None:
    # Evaluation rows that copy five pool samples (same image, same instruction) must never be selected.
    pool = pq.read_table(pipeline_world.pool).slice(0, 5).to_pylist()
    planted = [
        {**{k: r[k] for k in ("source_task", "images", "messages", "skills", "metadata")}, "id": f"leak-{i}",
         "answer": "yes", "choices": None, "answer_type": "open", "split": "test"}
        for i, r in enumerate(pool)
    ]
    leak = tmp_path / "leak.parquet"
    pq.write_table(pa.Table.from_pylist(planted, schema=EVAL_SCHEMA), leak)
    _, rows, manifest = _select(
        diagnosed, tmp_path / "run", strategy="full", budget=1, contamination={"evaluation": [str(leak)]}
    )
    selected = {r["id"] for r in rows}
    copied = {r["id"] for r in pool}
    assert not copied & selected
    assert manifest["counts"]["contaminated_excluded"] >= 5
    assert len(selected) == manifest["counts"]["pool"] - manifest["counts"]["contaminated_excluded"]


@pytest.mark.parametrize("unit,query", [("error", "skill"), ("gap", "step"), ("gap", "phrases")])
def test_units_and_queries(diagnosed: Path, tmp_path: Path, unit: str, query: str) -> None:
    errors = pq.read_table(diagnosed / "round_0" / "diagnose" / "errors.parquet").to_pylist()
    _, rows, manifest = _select(diagnosed, tmp_path, unit=unit, query=query, budget=20, mode="hybrid")
    assert len(rows) == 20
    targeted = [r for r in rows if r["error_ids"]]
    assert targeted
    if unit == "error":
        assert all(len(r["error_ids"]) == 1 for r in targeted)
        assert manifest["counts"]["units"] == sum(e["skill"] is not None for e in errors)
    if query == "step":
        steps = {e["step_text"] for e in errors if e["step_text"]}
        assert all(set(r["query"].split(" | ")) <= steps for r in targeted)
