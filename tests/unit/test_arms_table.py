"""The arms table and the trials' resource requests, without Ray."""

from __future__ import annotations

import pyarrow.parquet as pq

from edray.pipeline.arms import ARMS_SCHEMA, max_concurrent, trial_resources, write_arms_table
from edray.resources import ClusterShape
from edray.train.config import TrainConfig


def test_arms_table_keeps_one_row_per_arm_and_round(tmp_path) -> None:
    write_arms_table(tmp_path, [{"arm": "a", "round": 0, "status": "error", "error": "boom"}, {"arm": "b", "round": 0, "status": "ok"}])
    path = write_arms_table(tmp_path, [{"arm": "a", "round": 0, "status": "ok", "target_accuracy": 0.5}, {"arm": "a", "round": 1, "status": "ok"}])
    table = pq.read_table(path)
    assert table.schema.equals(ARMS_SCHEMA)
    rows = {(r["arm"], r["round"]): r for r in table.to_pylist()}
    assert sorted(rows) == [("a", 0), ("a", 1), ("b", 0)]
    assert rows[("a", 0)]["status"] == "ok" and rows[("a", 0)]["error"] is None and rows[("a", 0)]["target_accuracy"] == 0.5


def test_trial_resources_follow_the_train_config() -> None:
    assert trial_resources(None) == {"CPU": 1.0}
    assert trial_resources(TrainConfig(cpus_per_worker=0.5)) == {"CPU": 0.5}
    # a Ray Train arm's workers reserve their own CPUs; its trial holds none
    assert trial_resources(TrainConfig(num_workers=2)) == {"CPU": 0.0}


def test_ray_train_arms_are_capped_by_the_worker_groups_the_cluster_holds() -> None:
    from edray.pipeline.arms import ArmWork

    def work(train: TrainConfig) -> ArmWork:
        return ArmWork(name="x", round=0, root="r", student="s", pool="p", evaluate=None, selection="sel",
                       train=train.model_dump(mode="json"), resources=trial_resources(train))  # fmt: skip

    shape = ClusterShape(cpus=8, gpus=0, node_cpus=4, node_gpus=0)
    assert max_concurrent([work(TrainConfig())], shape) is None  # in-process arms: Tune's accounting suffices
    assert max_concurrent([work(TrainConfig()), work(TrainConfig(num_workers=3))], shape) == 2
