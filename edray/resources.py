"""The Ray cluster a stage runs on, what a stage asks of it, and the guard against waiting for ever.

A Ray job that asks for more than the cluster holds does not fail: it waits, idle, for resources that
never come (an actor pool of 2.15 CPUs on a 2-CPU machine hung for ever). So every stage that starts
Ray work states its :class:`ResourcePlan` first; :func:`check_plan` compares it with the cluster and
stops at once with an error naming the config fields and numbers that do not fit. Sizes a user left
unset are derived from the cluster (:func:`share_cpus`). While the work runs, :func:`guard_stalls`
fails a stage whose pipeline produces nothing for too long although the cluster has room, and says
what it was waiting for.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# Fractional CPUs make no difference to how much work fits on a core, only to what Ray schedules
# together; compare with a little slack so 0.1 + 0.2 style sums do not refuse a plan that fits exactly.
_EPS = 1e-6


class ResourceError(RuntimeError):
    """A stage's resource plan cannot run on this cluster. The message names the fields to change."""


class StallError(RuntimeError):
    """A stage's Ray work produced nothing for longer than its stall timeout while the cluster had room."""


@dataclass(frozen=True)
class ClusterShape:
    """What the connected cluster holds: totals, and the largest single node (an actor cannot span nodes)."""

    cpus: float
    gpus: float
    node_cpus: float
    node_gpus: float

    def describe(self) -> str:
        gpus = f", {self.gpus:g} GPU" if self.gpus else ", no GPU"
        return f"{self.cpus:g} CPU{gpus} (largest node {self.node_cpus:g} CPU, {self.node_gpus:g} GPU)"


@dataclass(frozen=True)
class Demand:
    """One kind of Ray work a stage runs at the same time as its other demands.

    Attributes:
        what: a short noun for messages (``embedder actors``, ``read tasks``).
        count: how many run at once (actors of a pool, workers; 1 for a stream of tasks).
        cpus: CPUs each one reserves.
        gpus: GPUs each one reserves.
        fields: the config fields that set ``count`` / ``cpus`` / ``gpus``, e.g.
            ``("embed.actors", "embed.num_cpus")``: named in the error when the plan does not fit.
    """

    what: str
    count: int
    cpus: float
    gpus: float = 0.0
    fields: tuple[str, ...] = ()

    def describe(self) -> str:
        names = " x ".join(self.fields) if self.fields else self.what
        gpu = f" + {self.count} x {self.gpus:g} GPU" if self.gpus else ""
        return f"{self.what} ({names}): {self.count} x {self.cpus:g} CPU{gpu}"


@dataclass
class ResourcePlan:
    """Everything a stage keeps scheduled at once. A Ray Data pipeline streams: its read tasks, map tasks
    and every actor pool (pools start at full size) must all hold their resources together."""

    stage: str
    demands: list[Demand] = field(default_factory=list)

    @property
    def cpus(self) -> float:
        return sum(d.count * d.cpus for d in self.demands)

    @property
    def gpus(self) -> float:
        return sum(d.count * d.gpus for d in self.demands)

    def describe(self) -> str:
        return "; ".join(d.describe() for d in self.demands)


def workers_plan(stage: str, num_workers: int, cpus: float, gpus: float = 0.0, prefix: str = "") -> ResourcePlan:
    """The plan of a Ray Train run: ``num_workers`` workers held together (fields ``<prefix>num_workers``,
    ``<prefix>cpus_per_worker``, and ``<prefix>use_gpu`` when it asks for GPUs)."""
    fields = (f"{prefix}num_workers", f"{prefix}cpus_per_worker") + ((f"{prefix}use_gpu",) if gpus else ())
    return ResourcePlan(stage, [Demand("training workers", num_workers, cpus, gpus, fields=fields)])


def cluster_shape() -> ClusterShape:
    """The shape of the Ray cluster this process is connected to (alive nodes only)."""
    import ray

    cpus = gpus = node_cpus = node_gpus = 0.0
    for node in ray.nodes():
        if not node.get("Alive", node.get("alive", False)):
            continue
        res = node.get("Resources", {})
        c, g = float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))
        cpus, gpus = cpus + c, gpus + g
        node_cpus, node_gpus = max(node_cpus, c), max(node_gpus, g)
    return ClusterShape(cpus=cpus, gpus=gpus, node_cpus=node_cpus, node_gpus=node_gpus)


def check_plan(plan: ResourcePlan, shape: ClusterShape) -> None:
    """Refuse a plan the cluster can never schedule, before any Ray work starts.

    Raises:
        ResourceError: the plan needs more CPUs or GPUs than the cluster holds, or one actor needs more
            than the largest node; the message lists every demand with its fields and numbers.
    """
    problems: list[str] = []
    if plan.cpus > shape.cpus + _EPS:
        problems.append(f"it needs {plan.cpus:g} CPU at once and the cluster has {shape.cpus:g}")
    if plan.gpus > shape.gpus + _EPS:
        problems.append(f"it needs {plan.gpus:g} GPU at once and the cluster has {shape.gpus:g}")
    for d in plan.demands:
        if d.cpus > shape.node_cpus + _EPS or d.gpus > shape.node_gpus + _EPS:
            names = ", ".join(d.fields) or d.what
            problems.append(
                f"one of the {d.what} needs {d.cpus:g} CPU / {d.gpus:g} GPU ({names}) and the largest node has "
                f"{shape.node_cpus:g} CPU / {shape.node_gpus:g} GPU"
            )
    if not problems:
        return
    fields = sorted({f for d in plan.demands for f in d.fields})
    raise ResourceError(
        f"{plan.stage} cannot run on this cluster ({shape.describe()}): {'; '.join(problems)}.\n"
        f"  plan: {plan.describe()}\n"
        f"  lower {', '.join(fields) or 'the sizes'} (--set field=value), or leave them unset to size them from "
        "the cluster."
    )


def share_cpus(free: float, count: int | None, cpus: float | None, per_actor_cap: float = 1.0) -> tuple[int, float]:
    """Size an actor pool from the CPUs left for it, for whichever of ``count`` / ``cpus`` is unset.

    Args:
        free: CPUs the pool may use (the cluster's CPUs less every other demand of the plan).
        count: actors the user asked for, or None to derive.
        cpus: CPUs per actor the user asked for, or None to derive.
        per_actor_cap: the most CPUs a derived actor reserves (more, smaller actors spread across nodes).

    Returns:
        ``(count, cpus)``; a derived size never makes the pool exceed ``free`` (at least one actor with a
        positive share when ``free`` is small). Sizes the user set are returned as given, so a plan that
        does not fit is refused by :func:`check_plan` rather than silently shrunk.
    """
    free = max(free, 0.05)
    if count is not None and cpus is not None:
        return count, cpus
    if cpus is not None:
        return max(1, math.floor(free / cpus + _EPS)), cpus
    if count is not None:
        return count, round(min(per_actor_cap, free / count), 3)
    if free <= per_actor_cap:
        return 1, round(free, 3)
    n = max(1, math.floor(free / per_actor_cap + _EPS))
    return n, round(min(per_actor_cap, free / n), 3)


def ensure_ray(num_cpus: int | None = None) -> None:
    """Connect this process to Ray once: the cluster in ``RAY_ADDRESS`` (``ray job submit`` sets it; use
    ``RAY_ADDRESS=auto`` for a cluster started with ``ray start`` here), else a private local instance.

    A private instance holds exactly this machine's CPUs (``EDRAY_RAY_CPUS`` or ``num_cpus`` override it):
    stage plans are sized from and checked against what is really there, never oversubscribed. Workers'
    output reaches the driver, whose output the console routes to the run's log folder.
    """
    import ray

    if ray.is_initialized():
        return
    common: dict[str, Any] = {"include_dashboard": False, "configure_logging": False, "log_to_driver": True}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**common)
    else:
        cpus = _private_cpus(num_cpus)
        # Workers import edray from where this process does, installed or not.
        import edray

        source = str(Path(edray.__file__).resolve().parents[1])
        pythonpath = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
        ray.init(address="local", num_cpus=cpus, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **common)
        global _OWNED_RAY
        _OWNED_RAY = True
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False


_OWNED_RAY = False


def release_ray() -> None:
    """Shut down the private Ray this process started (if any), so its workers' last forwarded output
    arrives while the console still routes it to the log; a joined cluster is left alone."""
    global _OWNED_RAY
    if _OWNED_RAY:
        import ray

        ray.shutdown()
        _OWNED_RAY = False


def _private_cpus(num_cpus: int | None = None) -> int:
    return num_cpus or int(os.environ.get("EDRAY_RAY_CPUS", "0")) or (os.cpu_count() or 1)


def expected_shape() -> ClusterShape | None:
    """The cluster this process will use, known before Ray starts where possible: the connected cluster, or
    the private instance :func:`ensure_ray` would start (this machine's CPUs and NVIDIA GPUs); None when
    only connecting to ``RAY_ADDRESS`` can tell."""
    import ray

    if ray.is_initialized():
        return cluster_shape()
    if os.environ.get("RAY_ADDRESS"):
        return None
    cpus = float(_private_cpus())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = float(len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"]))
    else:
        gpus = float(len(list(Path("/dev").glob("nvidia[0-9]*"))))
    return ClusterShape(cpus=cpus, gpus=gpus, node_cpus=cpus, node_gpus=gpus)


def prepare_ray(plan: "Callable[[ClusterShape], ResourcePlan | None] | None" = None) -> ClusterShape:
    """Check a stage's plan, connect to Ray, and check it again against the cluster as Ray sees it.

    The first check runs before Ray starts whenever the cluster's shape is known without it (a private
    instance), so a plan that cannot fit fails in a second, not after Ray's start-up.

    Args:
        plan: the stage's plan for a cluster shape (sizes left unset are derived from the shape).

    Returns:
        The connected cluster's shape.

    Raises:
        ResourceError: see :func:`check_plan`.
    """
    for shape in (expected_shape(), None):
        if shape is None:
            ensure_ray()
            shape = cluster_shape()
        resource_plan = plan(shape) if plan is not None else None
        if resource_plan is not None:
            check_plan(resource_plan, shape)
    return shape


def describe_wait(plan: ResourcePlan | None) -> str:
    """What a waiting stage is waiting for, from Ray's view: free vs. total resources and the plan."""
    import ray

    if ray.is_initialized():
        total, free = ray.cluster_resources(), ray.available_resources()
        parts = [f"{k} {free.get(k, 0.0):g} free of {total[k]:g}" for k in ("CPU", "GPU") if total.get(k)]
        text = "cluster: " + ", ".join(parts)
    else:
        text = "not connected to Ray"
    if plan is not None:
        text += f"; the stage's plan: {plan.describe()} ({plan.cpus:g} CPU in all)"
    return text


def guard_stalls(
    items: Iterable[T],
    timeout_s: float,
    plan: ResourcePlan | None = None,
    what: str = "batch",
    queued: Callable[[], bool] | None = None,
) -> Iterator[T]:
    """Yield from ``items``; fail when nothing arrives for ``timeout_s`` unless the stage is queueing.

    The iterable is drained by a daemon thread, so a blocked Ray iterator cannot block the check. When
    the timeout passes while other work holds more of the cluster than the stage's plan leaves it (it
    will free up), the stage is queueing, not stalled: a warning is logged and the wait goes on.

    Args:
        items: the stage's stream of results (e.g. ``Dataset.iter_batches()``).
        timeout_s: seconds without an item before the stage is judged; 0 disables the guard.
        plan: the stage's plan, quoted in the error.
        what: the noun of an item, for the message.
        queued: whether the stage is waiting behind other work now (default: the cluster's CPUs in use
            exceed what the plan reserves).

    Raises:
        StallError: no item for ``timeout_s`` while nothing else held the cluster.
    """
    if timeout_s <= 0:
        yield from items
        return
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=4)
    done = threading.Event()

    def drain() -> None:
        try:
            for item in items:
                while not done.is_set():
                    try:
                        q.put(("item", item), timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if done.is_set():
                    return
            q.put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            q.put(("error", exc))

    thread = threading.Thread(target=drain, name="edray-stall-guard", daemon=True)
    thread.start()
    is_queued = queued or (lambda: _others_hold(plan))
    n = 0
    last = time.monotonic()
    try:
        while True:
            try:
                kind, value = q.get(timeout=1.0)
            except queue.Empty:
                waited = time.monotonic() - last
                if waited < timeout_s:
                    continue
                if is_queued():
                    log.warning("no %s for %.0f s: queued behind other work (%s)", what, waited, describe_wait(plan))
                    last = time.monotonic()
                    continue
                raise StallError(
                    f"{plan.stage if plan else 'stage'}: no {what} for {waited:.0f} s after {n} so far, and no other "
                    f"work held the cluster ({describe_wait(plan)}). Check the model endpoints and the logs; raise "
                    f"the stall timeout if one {what} really takes this long."
                ) from None
            if kind == "end":
                return
            if kind == "error":
                raise value
            n += 1
            last = time.monotonic()
            yield value
    finally:
        done.set()


def _others_hold(plan: ResourcePlan | None) -> bool:
    """True when the cluster's CPUs in use exceed what the stage's plan reserves: someone else's work."""
    import ray

    if plan is None:
        return False
    in_use = ray.cluster_resources().get("CPU", 0.0) - ray.available_resources().get("CPU", 0.0)
    return in_use > plan.cpus + _EPS
