"""Resource plans, derived pool sizes and the stall guard (no Ray needed)."""

from __future__ import annotations

import threading
import time

import pytest

from edray.resources import ClusterShape, Demand, ResourceError, ResourcePlan, StallError, check_plan, guard_stalls, share_cpus

TWO_CORES = ClusterShape(cpus=2, gpus=0, node_cpus=2, node_gpus=0)


def test_the_plan_that_hung_on_two_cores_is_refused_with_its_fields_and_numbers():
    # read 1.0 + annotator 0.25 + two embedders of 0.9: 3.05 CPU asked of 2 (the hang of the index stage).
    plan = ResourcePlan(
        "index",
        [
            Demand("read tasks", 1, 1.0, fields=("read.num_cpus",)),
            Demand("annotator actors", 1, 0.25, fields=("annotate.actors", "annotate.num_cpus")),
            Demand("embedder actors", 2, 0.9, fields=("embed.actors", "embed.num_cpus")),
        ],
    )
    with pytest.raises(ResourceError) as err:
        check_plan(plan, TWO_CORES)
    text = str(err.value)
    assert "needs 3.05 CPU at once and the cluster has 2" in text
    for name in ("read.num_cpus", "annotate.actors", "embed.actors", "embed.num_cpus"):
        assert name in text
    assert "2 x 0.9 CPU" in text


def test_a_plan_that_fits_exactly_passes_and_an_actor_larger_than_any_node_does_not():
    check_plan(ResourcePlan("x", [Demand("a", 2, 0.5), Demand("b", 1, 1.0)]), TWO_CORES)
    cluster = ClusterShape(cpus=8, gpus=0, node_cpus=4, node_gpus=0)
    with pytest.raises(ResourceError, match="largest node has 4 CPU"):
        check_plan(ResourcePlan("x", [Demand("workers", 1, 6.0, fields=("cpus_per_worker",))]), cluster)
    with pytest.raises(ResourceError, match="needs 1 GPU"):
        check_plan(ResourcePlan("x", [Demand("workers", 1, 1.0, 1.0, fields=("use_gpu",))]), cluster)


@pytest.mark.parametrize(
    "free, count, cpus, expected",
    [
        (1.25, None, None, (1, 1.0)),  # 2 cores less read, validation and annotator: one embedder of 1 CPU
        (0.5, None, None, (1, 0.5)),  # less than a CPU left: one smaller actor
        (7.5, None, None, (7, 1.0)),  # a bigger cluster: one-CPU actors
        (1.25, 2, None, (2, 0.625)),  # the count given: the CPUs shared
        (3.0, None, 0.5, (6, 0.5)),  # the CPUs given: as many as fit
        (1.0, 3, 1.0, (3, 1.0)),  # both given: kept as is, for check_plan to refuse
    ],
)
def test_share_cpus(free, count, cpus, expected):
    assert share_cpus(free, count, cpus) == expected


def _slow(items: list[int], pause_s: float, after: int):
    for i in items:
        if i == after:
            time.sleep(pause_s)
        yield i


def test_guard_stalls_passes_items_through_and_fails_a_silent_stream():
    assert list(guard_stalls(iter(range(5)), timeout_s=2, queued=lambda: False)) == [0, 1, 2, 3, 4]
    got: list[int] = []
    t0 = time.monotonic()
    with pytest.raises(StallError, match="no batch for"):
        for i in guard_stalls(_slow([0, 1, 2], 30, after=2), timeout_s=1.5, queued=lambda: False):
            got.append(i)
    assert got == [0, 1] and time.monotonic() - t0 < 10


def test_guard_stalls_waits_while_queued_behind_other_work():
    queued = threading.Event()
    queued.set()
    # Other work holds the cluster for the whole pause: a warning, not a failure.
    assert list(guard_stalls(_slow([0, 1, 2], 3.5, after=1), timeout_s=1, queued=queued.is_set)) == [0, 1, 2]


def test_guard_stalls_reraises_the_streams_own_error():
    def broken():
        yield 1
        raise ValueError("bad block")

    with pytest.raises(ValueError, match="bad block"):
        list(guard_stalls(broken(), timeout_s=5, queued=lambda: False))
