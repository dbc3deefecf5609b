"""The arm runner: a run's arms as Ray Tune trials, side by side, resumable from the run folder.

An *arm* of one round is select → train → evaluate: its own selection, its own tuned student, that
student evaluated alone. The base student is evaluated once per round, as one more trial. Trials run
concurrently up to the cluster's resources (each asks for what its train config needs), a trial that
fails is recorded and the others go on, and the round's parts are then collected into
``round_<k>/evaluate`` (what the report reads) and the run-level table ``arms.parquet``.

Small arms are cheap: an arm with one CPU worker trains in its trial's process (``train.runner``
auto → in_process), so it pays no distributed start-up. Tune reuses trial processes, so the arms that
run one after another in a process share what they can: the loaded base student, the pool's rows and
their checks, the evaluation sets. Arms with several workers or a GPU keep Ray Train inside their
trial; the trial itself then reserves no CPU and the number of such trials at once is capped by what
their worker groups need.

The run folder is the source of truth: each stage keeps the stage contract (``manifest.json``,
``_SUCCESS``), an arm whose stages are all committed is not run again, and a killed arm resumes from
its stages' outputs and its training checkpoints. Each finished or failed arm leaves
``<arm>/round_<k>/arm.json``; ``arms.parquet`` is rebuilt from those files, so it never holds an arm
twice.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from edray.resources import ClusterShape, Demand, ResourcePlan, check_plan
from edray.rundir import StageDir, write_atomic
from edray.schemas import SELECTION

log = logging.getLogger(__name__)

ARMS_TABLE = "arms.parquet"
ARM_RECORD = "arm.json"
BASE = "base"
EVAL_ARM = "evaluate_arm"
EVAL_BASE = "evaluate_base"

ARMS_SCHEMA = pa.schema(
    [
        ("arm", pa.string()),
        ("round", pa.int32()),
        ("strategy", pa.string()),
        ("budget", pa.int64()),
        ("seed", pa.int64()),
        ("update", pa.string()),
        ("mode", pa.string()),
        ("query", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("target_accuracy", pa.float64()),
        ("general_accuracy", pa.float64()),
        ("target_n", pa.int64()),
        ("selected", pa.int64()),
        ("train_steps", pa.int64()),
        ("runner", pa.string()),
        ("node_id", pa.string()),
        ("wall_s", pa.float64()),
        ("started_at", pa.float64()),
        ("select_s", pa.float64()),
        ("train_s", pa.float64()),
        ("evaluate_s", pa.float64()),
        ("finished_at", pa.float64()),
    ]
)


@dataclass
class ArmWork:
    """One trial: what to run and where (plain data, so it travels as a Tune config).

    An arm selects with ``select`` (a select stage config) or trains on a given ``selection`` file (an
    oracle's, or a benchmark's), trains with ``train`` and is evaluated with ``evaluate`` (none: not
    evaluated). Without ``train`` the trial evaluates the base student.
    """

    name: str
    round: int
    root: str
    student: str
    pool: str
    evaluate: dict[str, Any] | None
    strategy: str = BASE
    select: dict[str, Any] | None = None
    selection: str | None = None
    train: dict[str, Any] | None = None
    resources: dict[str, float] = field(default_factory=lambda: {"CPU": 1.0})
    labels: dict[str, Any] = field(default_factory=dict)
    force: bool = False

    @property
    def is_base(self) -> bool:
        """The base student's evaluation (no selection, no training)."""
        return self.train is None

    @property
    def record_path(self) -> Path:
        return StageDir(Path(self.root), EVAL_BASE if self.is_base else EVAL_ARM, self.round).path.parent / (
            f"{BASE}.json" if self.is_base else ARM_RECORD
        )


def trial_resources(train: Any | None) -> dict[str, float]:
    """What a trial reserves: one in-process worker's CPUs, or nothing beside a Ray Train worker group
    (which reserves its own), or one CPU to evaluate the base."""
    if train is None:
        return {"CPU": 1.0}
    if train.in_process:
        return {"CPU": float(train.cpus_per_worker)}
    return {"CPU": 0.0}


def grid_plan(works: list[ArmWork]) -> ResourcePlan:
    """The largest single trial, which the cluster must be able to hold (trials beyond that queue)."""
    from edray.train.config import TrainConfig

    def demand(w: ArmWork) -> Demand:
        if w.train is None or TrainConfig.model_validate(w.train).in_process:
            return Demand(f"trial of arm {w.name}", 1, w.resources.get("CPU", 0.0), w.resources.get("GPU", 0.0),
                          fields=(f"arms[{w.name}].train.cpus_per_worker",))
        t = TrainConfig.model_validate(w.train)
        return Demand(f"training workers of arm {w.name}", t.num_workers, t.cpus_per_worker, 1.0 if t.use_gpu else 0.0,
                      fields=(f"arms[{w.name}].train.num_workers", f"arms[{w.name}].train.cpus_per_worker"))

    biggest = max((demand(w) for w in works), key=lambda d: (d.count * d.cpus, d.count * d.gpus))
    return ResourcePlan("arms", [biggest])


def max_concurrent(works: list[ArmWork], shape: ClusterShape) -> int | None:
    """A cap on trials at once when some arms run Ray Train (their trials reserve nothing themselves)."""
    from edray.train.config import TrainConfig

    heavy = [TrainConfig.model_validate(w.train) for w in works if w.train is not None]
    heavy = [t for t in heavy if not t.in_process]
    if not heavy:
        return None
    per = max(t.num_workers * t.cpus_per_worker for t in heavy)
    return max(1, int(math.floor(shape.cpus / per))) if per > 0 else None


# --- one arm -------------------------------------------------------------------------------------------


def arm_done(work: ArmWork) -> bool:
    """Every stage of the arm is committed with its current fingerprint."""
    from edray.evaluate import job as evaluate_job
    from edray.evaluate.config import EvaluateConfig

    ev = EvaluateConfig.model_validate(work.evaluate) if work.evaluate is not None else None
    if work.is_base:
        return ev is not None and evaluate_job.stage(ev, work.root, EVAL_BASE).done()
    from edray.train import job as train_job
    from edray.train.config import TrainConfig

    selection = _selection_path(work)
    if selection is None:
        return False
    tr = train_job.stage(TrainConfig.model_validate(work.train), work.root, work.student, selection, work.pool, work.round)
    return tr.done() and (ev is None or evaluate_job.stage(ev, work.root, EVAL_ARM).done())


def _selection_path(work: ArmWork) -> Path | None:
    """The arm's selection file: the given one, or its select stage's once that stage is current."""
    if work.selection is not None:
        return Path(work.selection)
    from edray.select import job as select_job
    from edray.select.config import SelectConfig

    try:
        sel = select_job.stage(SelectConfig.model_validate(work.select), work.root)
    except FileNotFoundError:
        return None
    return sel.path / SELECTION if sel.done() else None


def run_arm(work: ArmWork) -> dict[str, Any]:
    """Run (or finish) one arm's stages in this process and return its record (see :data:`ARMS_SCHEMA`)."""
    from edray.evaluate import job as evaluate_job
    from edray.evaluate.config import EvaluateConfig

    started = time.time()
    timings: dict[str, float] = {}
    ev = EvaluateConfig.model_validate(work.evaluate) if work.evaluate is not None else None
    record: dict[str, Any] = {"selected": None, "train_steps": None, "runner": None}
    if not work.is_base:
        from edray.train import job as train_job
        from edray.train.config import TrainConfig

        t0 = time.time()
        if work.selection is not None:
            selection = Path(work.selection)
            record["selected"] = pq.read_metadata(selection).num_rows
        else:
            from edray.select import job as select_job
            from edray.select.config import SelectConfig

            select_dir = select_job.run(SelectConfig.model_validate(work.select), work.root, force=work.force)
            selection = select_dir / SELECTION
            record["selected"] = _manifest(select_dir).get("counts", {}).get("selected")
        timings["select_s"] = time.time() - t0
        t1 = time.time()
        train_dir = train_job.run(
            TrainConfig.model_validate(work.train), work.root, work.student, selection, work.pool, work.round, force=work.force
        )
        timings["train_s"] = time.time() - t1
        train_m = _manifest(train_dir)
        record.update({"train_steps": train_m.get("counts", {}).get("steps"), "runner": train_m.get("metrics", {}).get("runner")})
    if ev is not None:
        t2 = time.time()
        eval_dir = evaluate_job.run(ev, work.root, force=work.force, name=EVAL_BASE if work.is_base else EVAL_ARM)
        timings["evaluate_s"] = time.time() - t2
        record.update(_accuracies(eval_dir, ev.main_task))
    return {
        **_identity(work), **record, **timings, "status": "ok", "error": None,
        "started_at": started, "wall_s": time.time() - started,
    }  # fmt: skip


def _identity(work: ArmWork) -> dict[str, Any]:
    import ray

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    return {"arm": work.name, "round": work.round, "strategy": work.strategy, "node_id": node, **work.labels}


def _manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _accuracies(eval_dir: Path, task: str | None = None) -> dict[str, Any]:
    """Target (of ``task`` alone when given, else of every target row) and general accuracy of an arm."""
    from edray.schemas import EVAL_SCORES, SCORE_ALL

    scores = pq.read_table(Path(eval_dir) / EVAL_SCORES).to_pylist()
    out: dict[str, Any] = {}
    for s in scores:
        wanted = task if task is not None and s["suite"] == "target" else SCORE_ALL
        if s["task"] == wanted and s["skill"] == SCORE_ALL:
            out[f"{s['suite']}_accuracy"] = s["accuracy"]
            if s["suite"] == "target":
                out["target_n"] = int(s["n"])
    return out


def write_record(work: ArmWork, record: dict[str, Any]) -> None:
    """The arm's record, atomically (the last word on the arm: ``ok`` or ``error``)."""
    work.record_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(work.record_path, json.dumps({**record, "finished_at": time.time()}, default=str))


def arm_trial(config: dict[str, Any]) -> None:
    """Tune's function trainable: one arm; its record goes to the arm's folder and to Tune."""
    from ray import tune

    work = ArmWork(**config["work"])
    try:
        record = run_arm(work)
    except Exception as exc:
        record = {
            **_identity(work),
            "status": "error",
            "error": f"{type(exc).__name__}: {exc}"[:2000],
            "traceback": traceback.format_exc()[-4000:],
        }
        write_record(work, record)
        raise
    write_record(work, record)
    tune.report({k: v for k, v in record.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)})


# --- the grid ------------------------------------------------------------------------------------------


class _Progress:
    """One console line per finished or failed arm, with its count so far."""

    def __init__(self, total: int, done: int) -> None:
        from ray.tune import Callback

        outer = self

        class _Lines(Callback):
            def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                outer.finished(trial, None)

            def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                outer.finished(trial, "failed")

        self.total, self.done, self.callback = total, done, _Lines()

    def finished(self, trial: Any, failure: str | None) -> None:
        from edray.console import console

        self.done += 1
        work = trial.config["work"]
        result = trial.last_result or {}
        if failure:
            folder = Path(work["root"]) / f"round_{work['round']}"
            tail = f"failed (see {folder})"
        else:
            acc = result.get("target_accuracy")
            tail = f"target {acc:.3f}, {result.get('wall_s', 0):.1f} s" if isinstance(acc, float) else "done"
        console.print(f"    arm {work['name']} [{self.done}/{self.total}]: {tail}")


def run_arms(
    works: list[ArmWork], run_dir: Path, round_index: int, concurrency: int | None = None, force: bool = False
) -> list[dict[str, Any]]:
    """Run the arms of one round as Tune trials (finished arms are skipped) and return every arm's record.

    Args:
        works: the round's trials.
        run_dir: the run folder (Tune's own records go to ``<run-dir>/.tune``).
        round_index: the round k.
        concurrency: at most this many trials at once (default: as many as the cluster's resources hold).
        force: run every arm's stages again, finished or not.

    Raises:
        edray.resources.ResourceError: the largest trial cannot fit the cluster.
    """
    from ray import tune

    from edray.resources import cluster_shape

    if force:
        works = [replace(w, force=True) for w in works]
    pending = works if force else [w for w in works if not arm_done(w)]
    for w in works:
        if w not in pending and _record_status(w) != "ok":
            # finished before arm records existed, or by a re-run of its stages outside the runner
            write_record(w, {**_identity(w), **_from_stages(w), "status": "ok", "error": None})
    if pending:
        shape = cluster_shape()
        check_plan(grid_plan(pending), shape)
        progress = _Progress(len(works), len(works) - len(pending))
        trainable = tune.with_resources(
            arm_trial, lambda config: tune.PlacementGroupFactory([_bundle(config["work"]["resources"])])
        )
        tuner = tune.Tuner(
            trainable,
            param_space={"work": tune.grid_search([asdict(w) for w in pending])},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=concurrency or max_concurrent(pending, shape),
                reuse_actors=True,
                trial_name_creator=lambda t: t.config["work"]["name"],
                trial_dirname_creator=lambda t: f"{t.config['work']['name']}-{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=f"round_{round_index}",
                storage_path=str((run_dir / ".tune").resolve()),
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                callbacks=[progress.callback],
                verbose=0,
            ),
        )
        grid = tuner.fit()
        for result in grid:
            if result.error is not None:
                work = ArmWork(**result.config["work"])
                if not work.record_path.is_file() or json.loads(work.record_path.read_text()).get("status") != "error":
                    # the trial died before it could write its own record (its process was lost)
                    write_record(work, {**_identity(work), "status": "error", "error": str(result.error)[:2000]})
    return [json.loads(w.record_path.read_text()) for w in works]


def _record_status(work: ArmWork) -> str | None:
    try:
        return json.loads(work.record_path.read_text()).get("status")
    except (OSError, ValueError):
        return None


def _bundle(resources: dict[str, float]) -> dict[str, float]:
    # A bundle needs some resource; a Ray Train arm's trial holds (almost) nothing beside its workers.
    return {k: v for k, v in resources.items() if v > 0} or {"CPU": 0.001}


def _from_stages(work: ArmWork) -> dict[str, Any]:
    """The record of an arm finished before arm records existed, read back from its stage folders."""
    from edray.evaluate import job as evaluate_job
    from edray.evaluate.config import EvaluateConfig

    if work.evaluate is None:
        return {}
    ev = EvaluateConfig.model_validate(work.evaluate)
    return _accuracies(evaluate_job.stage(ev, work.root, EVAL_BASE if work.is_base else EVAL_ARM).path, ev.main_task)


def write_arms_table(run_dir: Path, records: list[dict[str, Any]]) -> Path:
    """``<run-dir>/arms.parquet``: one row per arm and round (a re-run replaces an arm's row, never adds one)."""
    path = Path(run_dir) / ARMS_TABLE
    previous = pq.read_table(path).to_pylist() if path.is_file() else []
    rows: dict[tuple[str, int], dict[str, Any]] = {(r["arm"], int(r["round"])): r for r in previous}
    for r in records:
        rows[(r["arm"], int(r["round"]))] = {name: r.get(name) for name in ARMS_SCHEMA.names}
    table = pa.Table.from_pylist(sorted(rows.values(), key=lambda r: (r["round"], r["arm"])), schema=ARMS_SCHEMA)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def round_works(cfg: Any, stages: Any, paths: Any, round_index: int, student: Path) -> list[ArmWork]:
    """The trials of round k: the base's evaluation, then each arm of the round (all arms in round 0,
    the main arm later), from the round's validated stage configs."""
    arms = cfg.arms if round_index == 0 else cfg.arms[:1]
    ev = stages.evaluate
    works = [
        ArmWork(
            name=BASE, round=round_index, root=str(paths.run_dir), student=str(student), pool=str(paths.pool),
            evaluate=ev.model_copy(update={"models": [], "evaluate_base": True}).model_dump(mode="json"),
        )
    ]
    specs = {m.name: m for m in ev.models}
    for arm in arms:
        # each arm is answered on its own tasks' test splits (the base on every task some arm has)
        tasks = cfg.arm_eval_tasks(arm)
        target = [str(paths.split(t, "test")) for t in tasks]
        main = {"main_task": cfg.task} if len(tasks) > 1 else {"main_task": None}
        sel, train = stages.select[arm.name], stages.train[arm.name]
        selection = None
        if arm.strategy == "oracle":
            selection = str(_oracle_selection(paths.arm_dir(cfg.arms, arm), paths.world_dir, arm.name, sel, round_index, student, cfg.task))
        works.append(
            ArmWork(
                name=arm.name,
                round=round_index,
                root=str(paths.arm_dir(cfg.arms, arm)),
                student=str(student),
                pool=str(paths.pool),
                evaluate=ev.model_copy(
                    update={"models": [specs[arm.name]], "evaluate_base": False, "target": target, **main}
                ).model_dump(mode="json"),
                strategy=arm.strategy,
                select=None if selection else sel.model_dump(mode="json"),
                selection=selection,
                train=train.model_dump(mode="json"),
                resources=trial_resources(train),
                labels={
                    "budget": sel.budget,
                    "seed": sel.seed,
                    "update": train.mode,
                    "mode": sel.mode if arm.strategy == "error_driven" else None,
                    "query": sel.query if arm.strategy == "error_driven" else None,
                },
            )
        )
    return works


def _oracle_selection(root: Path, world_dir: Path, arm: str, sel: Any, round_index: int, student: Path, task: str) -> Path:
    """The oracle arm's selection, written from the world's ground truth into the arm's select folder: rows of
    the student's gap skills that the target task needs (all its gap skills for a task that needs none)."""
    from edray.world.checks import designed_gap_skills
    from edray.world.oracle import write_oracle_selection
    from edray.world.tasks import TARGET_TASK_BY_NAME

    if sel.budget is None:
        raise ValueError(f"arm {arm}: the oracle needs select.budget (an absolute number of rows)")
    gaps, _ = designed_gap_skills(student)
    needed = set(TARGET_TASK_BY_NAME[task].skills) if task in TARGET_TASK_BY_NAME else set()
    skills = [s for s in gaps if s in needed] or gaps
    folder = StageDir(Path(root), "select", round_index).path
    return write_oracle_selection(world_dir, folder, budget=sel.budget, seed=sel.seed, gap_skills=skills,
                                  round_index=round_index) / SELECTION


def eval_parts(works: list[ArmWork], records: list[dict[str, Any]]) -> list[Path]:
    """The committed evaluation folders of the base and of every arm that finished."""
    from edray.evaluate import job as evaluate_job
    from edray.evaluate.config import EvaluateConfig

    parts = []
    for w, r in zip(works, records):
        if r.get("status") == "ok" and w.evaluate is not None:
            ev = EvaluateConfig.model_validate(w.evaluate)
            parts.append(evaluate_job.stage(ev, w.root, EVAL_BASE if w.is_base else EVAL_ARM).path)
    return parts
