"""How big the index pipeline's actor pools are on a given cluster, and its resource plan.

The pipeline streams: a read task, a validation task, the annotator pool and the embedder pool all hold
their CPUs at once (pools start at full size). Sizes the user set are taken as given and checked;
embedder sizes left unset take what the cluster has left after the rest, so the plan fits by
construction on any cluster, a 2-core laptop included.
"""

from __future__ import annotations

from dataclasses import dataclass

from edray.index.config import IndexConfig
from edray.resources import ClusterShape, Demand, ResourcePlan, share_cpus


@dataclass(frozen=True)
class IndexSizes:
    """Resolved pool sizes of one index run."""

    annotate_actors: int
    annotate_cpus: float
    embed_actors: int
    embed_cpus: float
    plan: ResourcePlan


def size_index(config: IndexConfig, shape: ClusterShape) -> IndexSizes:
    """Resolve unset pool sizes from the cluster and state the plan the stage will hold at once.

    Args:
        config: the index config (``embed.actors`` / ``embed.num_cpus`` may be unset).
        shape: the connected cluster.

    Returns:
        The sizes and their :class:`ResourcePlan`; the plan is checked by the stage runner.
    """
    a, e = config.annotate, config.embed
    demands = [
        Demand("read tasks", 1, config.read.num_cpus, fields=("read.num_cpus",)),
        Demand("validation tasks", 1, config.prepare_num_cpus, fields=("prepare_num_cpus",)),
    ]
    if a.backend == "vllm":
        # ray.data.llm runs its own GPU engine actors (vllm_gpus_per_actor); before them, one cache-lookup actor.
        annotate_actors, annotate_cpus = 1, a.num_cpus
        demands.append(Demand("cache-lookup actors", 1, a.num_cpus, fields=("annotate.num_cpus",)))
    else:
        annotate_actors, annotate_cpus = a.actors, a.num_cpus
        demands.append(Demand("annotator actors", a.actors, a.num_cpus, fields=("annotate.actors", "annotate.num_cpus")))
    if e.num_gpus > 0:
        actors = e.actors if e.actors is not None else max(1, int(shape.gpus // e.num_gpus))
        cpus = e.num_cpus if e.num_cpus is not None else 1.0
    else:
        left = shape.cpus - sum(d.count * d.cpus for d in demands)
        # One node's worth per actor at most: a bigger actor could not be placed on any node.
        actors, cpus = share_cpus(left, e.actors, e.num_cpus, per_actor_cap=min(1.0, shape.node_cpus))
    demands.append(Demand("embedder actors", actors, cpus, e.num_gpus, fields=("embed.actors", "embed.num_cpus") + (("embed.num_gpus",) if e.num_gpus else ())))
    return IndexSizes(annotate_actors, annotate_cpus, actors, cpus, ResourcePlan("index", demands))
