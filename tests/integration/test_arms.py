"""The arm runner on the session's Ray: arms as Tune trials, a failing arm recorded while the others
finish, finished arms never run again, and ``arms.parquet`` holding each arm once."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edray.train.config import TrainConfig

pytestmark = pytest.mark.slow


def _train() -> TrainConfig:
    return TrainConfig(mode="lora", batch_size=4, max_steps=2, torch_threads=1, checkpoint_every=100,
                       lora={"rank": 4, "alpha": 8}, optim={"lr": 1e-3, "warmup_steps": 0})  # fmt: skip


def _works(root: Path, student: Path, pool: Path, selections: dict[str, Path]) -> list:
    from edray.pipeline.arms import ArmWork, trial_resources

    cfg = _train()
    return [
        ArmWork(name=name, round=0, root=str(root / "arms" / name), student=str(student), pool=str(pool),
                evaluate=None, strategy="random", selection=str(sel), train=cfg.model_dump(mode="json"),
                resources=trial_resources(cfg), labels={"budget": pq.read_metadata(sel).num_rows, "seed": 0})
        for name, sel in selections.items()
    ]  # fmt: skip


def test_a_failed_arm_is_recorded_and_the_rest_finish_once(ray_session, train_student, train_pool, tmp_path) -> None:
    from edray.pipeline.arms import run_arms, write_arms_table

    ids = pq.read_table(train_pool, columns=["id"])["id"].to_pylist()
    selections = {}
    for name, rows in {"a": ids[:16], "b": ids[16:32], "broken": ["not-in-the-pool"]}.items():
        selections[name] = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({"id": rows}), selections[name])
    works = _works(tmp_path / "run", train_student, train_pool, selections)

    records = {r["arm"]: r for r in run_arms(works, tmp_path / "run", 0)}
    write_arms_table(tmp_path / "run", list(records.values()))
    assert records["a"]["status"] == records["b"]["status"] == "ok"
    assert records["a"]["runner"] == "in_process" and records["a"]["train_steps"] == 2
    assert records["broken"]["status"] == "error"
    assert "no trainable rows" in records["broken"]["error"]
    assert all(r["node_id"] for r in records.values())

    # a re-run retries only the failed arm: the finished arms' records stay as they were
    stamps = {w.name: w.record_path.read_text() for w in works if w.name != "broken"}
    again = {r["arm"]: r for r in run_arms(works, tmp_path / "run", 0)}
    path = write_arms_table(tmp_path / "run", list(again.values()))
    for w in works:
        if w.name in stamps:
            assert w.record_path.read_text() == stamps[w.name], f"arm {w.name} ran again"
    assert again["broken"]["status"] == "error"
    table = pq.read_table(path).to_pylist()
    assert sorted(r["arm"] for r in table) == ["a", "b", "broken"]
    assert json.loads(works[0].record_path.read_text())["status"] == "ok"

    # force: a finished arm runs again
    (forced,) = run_arms(works[:1], tmp_path / "run", 0, force=True)
    assert forced["status"] == "ok" and works[0].record_path.read_text() != stamps["a"]


def test_a_trial_too_big_for_the_cluster_is_refused_before_any_starts(ray_session, train_student, train_pool, tmp_path) -> None:
    from edray.pipeline.arms import run_arms
    from edray.resources import ResourceError

    ids = pq.read_table(train_pool, columns=["id"])["id"].to_pylist()[:16]
    pq.write_table(pa.table({"id": ids}), tmp_path / "sel.parquet")
    (work,) = _works(tmp_path / "run", train_student, train_pool, {"huge": tmp_path / "sel.parquet"})
    work.train = TrainConfig(num_workers=64, cpus_per_worker=1).model_dump(mode="json")
    with pytest.raises(ResourceError, match=r"arms\[huge\]\.train\.num_workers"):
        run_arms([work], tmp_path / "run", 0)
    assert not work.record_path.exists()


def test_an_oracle_arm_trains_on_the_worlds_gap_rows(world_dir, train_student, tmp_path) -> None:
    from edray.pipeline.arms import round_works
    from edray.pipeline.config import RunConfig
    from edray.pipeline.job import RunPaths, stage_configs
    from edray.world.checks import designed_gap_skills
    from edray.world.pool import true_skills

    cfg = RunConfig.model_validate(
        {"world_dir": str(world_dir), "student": str(train_student),
         "arms": [{"name": "ed"}, {"name": "oracle", "strategy": "oracle", "select": {"budget": 32, "seed": 3}}]}
    )  # fmt: skip
    paths = RunPaths(tmp_path / "run", world_dir, train_student)
    works = {w.name: w for w in round_works(cfg, stage_configs(cfg, paths, 0, student=train_student), paths, 0, train_student)}
    oracle = works["oracle"]
    assert oracle.select is None and oracle.strategy == "oracle" and works["ed"].select is not None
    sel = pq.read_table(oracle.selection).to_pylist()
    assert len(sel) == 32 and {r["strategy"] for r in sel} == {"oracle"}
    gaps = set(designed_gap_skills(train_student)[0])
    truth = {r["id"]: set(true_skills(r)) for r in pq.read_table(world_dir / "pool", columns=["id", "metadata"]).to_pylist()}
    assert gaps and all(truth[r["id"]] & gaps for r in sel)
    assert Path(oracle.selection).parent == tmp_path / "run" / "arms" / "oracle" / "round_0" / "select"


def test_a_two_worker_arm_keeps_ray_train_inside_its_trial(ray_session, train_student, train_pool, tmp_path) -> None:
    from edray.pipeline.arms import run_arms, trial_resources

    ids = pq.read_table(train_pool, columns=["id"])["id"].to_pylist()[:32]
    pq.write_table(pa.table({"id": ids}), tmp_path / "sel.parquet")
    (work,) = _works(tmp_path / "run", train_student, train_pool, {"ddp": tmp_path / "sel.parquet"})
    cfg = _train().model_copy(update={"num_workers": 2, "cpus_per_worker": 1.0})
    work.train, work.resources = cfg.model_dump(mode="json"), trial_resources(cfg)
    (record,) = run_arms([work], tmp_path / "run", 0)
    assert record["status"] == "ok", record.get("error")
    assert record["runner"] == "ray_train" and record["train_steps"] == 2
