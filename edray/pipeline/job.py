"""``edray run`` / ``edray quickstart``: the whole method, resumable at any point.

Inputs: a :class:`RunConfig` (a world to generate or an existing world folder; a student folder or a
pretraining recipe; stage sections). Outputs, in the run folder::

    world/                      the skills world (unless world_dir is given)
    index/ + lancedb/           the annotated, embedded supporting pool
    round_<k>/diagnose/         answers, errors, gaps of the student of round k
    round_<k>/select/           the main arm's selection        (arms/<name>/round_0/select for the others)
    round_<k>/train/            the main arm's tuned student     (arms/<name>/round_0/train for the others)
    round_<k>/evaluate_arm/     the main arm evaluated alone     (arms/<name>/round_0/evaluate_arm for the others)
    round_<k>/evaluate_base/    the base student evaluated (once per round)
    round_<k>/evaluate/         target accuracy, general retention, combined score of base and every arm
    arms.parquet                one row per arm and round: status, scores, node, wall time
    report/report.html          the HTML report

The arms of a round run as Ray Tune trials, side by side (:mod:`edray.pipeline.arms`).

Every stage commits with ``_SUCCESS`` and is skipped when its config and inputs are unchanged, so a run
killed anywhere and started again continues from the last finished stage.

Run it with::

    edray run --config jobs/quickstart.yaml --run-dir runs/demo
    edray quickstart            # the same on the shipped quickstart config
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from edray.config import ConfigError
from edray.console import console, stage_line
from edray.pipeline.config import ArmConfig, RunConfig, validate_section
from edray.resources import ensure_ray
from edray.rundir import MANIFEST, Stage, StageDir, run_stage
from edray.schemas import RUN_CONFIG, WORLD_EVAL_DIR, WORLD_GENERAL_SUITE, WORLD_INFO, WORLD_POOL_DIR

log = logging.getLogger(__name__)

STUDENT_NAME = "student"


def student_name(round_index: int, student: Path | None = None) -> str:
    """The served name of round k's student, e.g. ``student-3f9c0a1b`` or ``student-r1-77d0e2c4``.

    The name carries the round and, when ``student`` is given, a digest of that model folder's weights
    (:func:`model_digest`). The model client's response cache and the diagnose stage's fingerprint both
    include the model name, so other weights under the same run folder (the next round's student, or a
    re-pretrained base) are diagnosed afresh rather than answered from the previous weights' replies.
    """
    name = STUDENT_NAME if round_index == 0 else f"{STUDENT_NAME}-r{round_index}"
    return f"{name}-{model_digest(student)[:8]}" if student is not None else name


def model_digest(folder: Path) -> str:
    """A digest of a model folder's weights and config: file names, sizes and modification times (cheap)."""
    folder = Path(folder)
    h = hashlib.sha256(str(folder.resolve()).encode())
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("config.json"))
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


_PLACEHOLDER = "<filled-in-by-run>"


class ArmsFailed(RuntimeError):
    """Some arms of a round failed; the others finished and are recorded."""


@dataclass
class RunPaths:
    """Where a run's stages read and write."""

    run_dir: Path
    world_dir: Path
    student: Path

    @property
    def pool(self) -> Path:
        return self.world_dir / WORLD_POOL_DIR

    def split(self, task: str, split: str) -> Path:
        return self.world_dir / WORLD_EVAL_DIR / task / f"{split}.parquet"

    def arm_dir(self, arms: list[ArmConfig], arm: ArmConfig) -> Path:
        """The main arm writes into the run folder; comparison arms into ``arms/<name>``."""
        return self.run_dir if arm.name == arms[0].name else self.run_dir / "arms" / arm.name


@dataclass
class StageConfigs:
    """Every stage config of one round, validated, with the run's paths filled in."""

    index: Any
    diagnose: Any
    select: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    evaluate: Any = None


def stage_configs(
    cfg: RunConfig,
    paths: RunPaths | None = None,
    round_index: int = 0,
    base_url: str = "http://127.0.0.1:8011/v1",
    placeholder: bool = False,
    student: Path | None = None,
) -> StageConfigs:
    """Build and validate each stage's config for one round from the run config.

    Args:
        cfg: the run config.
        paths: the run's paths; ignored (placeholders used) when ``placeholder``.
        round_index: the round k.
        base_url: the run's Serve application (student and, unless external, teacher).
        placeholder: validate the sections only (paths are placeholders).
        student: the model folder diagnosed this round (default: the base student in round 0); its
            digest is part of the served name.

    Raises:
        ConfigError: a section holds an invalid or unknown field.
    """
    from edray.diagnose.config import DiagnoseConfig
    from edray.evaluate.config import EvaluateConfig
    from edray.index.config import IndexConfig
    from edray.select.config import SelectConfig
    from edray.train.config import TrainConfig

    if placeholder or paths is None:
        paths = RunPaths(Path(_PLACEHOLDER), Path(_PLACEHOLDER), Path(_PLACEHOLDER))
    validation = str(paths.split(cfg.task, "validation"))
    test = str(paths.split(cfg.task, "test"))
    eval_tasks = cfg.all_eval_tasks()
    tests = [str(paths.split(t, "test")) for t in eval_tasks]

    index = validate_section(IndexConfig, {**cfg.index, "pool": str(paths.pool)}, "index")

    diag = _merge(cfg.diagnose, {"validation": validation, "round": round_index})
    if student is None and round_index == 0 and not placeholder:
        student = paths.student
    student_client = {"base_url": base_url, "model": student_name(round_index, student), "api_key_env": cfg.serve.api_key_env}
    diag.setdefault("student", {})
    diag["student"] = _merge(diag["student"], {"client": _merge(diag["student"].get("client", {}), student_client)})
    teacher_url = cfg.serve.teacher_base_url or base_url
    teacher_key = cfg.serve.teacher_api_key_env if cfg.serve.teacher_base_url else cfg.serve.api_key_env
    diag["teacher"] = _merge(
        diag.get("teacher", {}), {"base_url": teacher_url, "model": cfg.serve.teacher_model, "api_key_env": teacher_key}
    )
    diagnose = validate_section(DiagnoseConfig, diag, "diagnose")

    out = StageConfigs(index=index, diagnose=diagnose)
    for arm in cfg.arms:
        sel = _merge(
            _deep_merge(cfg.select, arm.select),
            {
                "round": round_index,
                # the oracle's rows come from the world (edray.pipeline.arms); its section gives budget and seed
                "strategy": "random" if arm.strategy == "oracle" else arm.strategy,
                "index_dir": str(Path(cfg.index_dir).resolve() if cfg.index_dir else paths.run_dir / "index"),
                "diagnose_dir": str(StageDir(paths.run_dir, "diagnose", round_index).path),
            },
        )
        if arm.mode is not None:
            sel["mode"] = arm.mode
        if arm.replay_share is not None:
            sel["replay_share"] = arm.replay_share
        guard = dict(sel.get("contamination", {}))
        guard["evaluation"] = sorted(set(guard.get("evaluation", [])) | {validation, test, *tests})
        sel["contamination"] = guard
        out.select[arm.name] = validate_section(SelectConfig, sel, f"select (arm {arm.name})")
        train = _deep_merge(cfg.train, arm.train)
        if arm.train_mode is not None:
            train["mode"] = arm.train_mode
        out.train[arm.name] = validate_section(TrainConfig, train, f"train (arm {arm.name})")

    models = []
    for arm in cfg.arms if round_index == 0 else cfg.arms[:1]:
        train_dir = StageDir(paths.arm_dir(cfg.arms, arm), "train", round_index).path
        # The evaluate stage groups models by arm: baselines by their data strategy, the method by its
        # update mode (lora / full / spider), so the report can set retention against gain per mode.
        kind = out.train[arm.name].mode if arm.strategy == "error_driven" else arm.strategy
        models.append({"name": arm.name, "arm": kind, "path": str(train_dir)})
    ev = _merge(
        cfg.evaluate,
        {
            "target": tests,
            # several tasks: the summary (and arms.parquet) report the run's task; scores.parquet has every task
            **({"main_task": cfg.task} if len(tests) > 1 else {}),
            "general": str(paths.split(WORLD_GENERAL_SUITE, "test")),
            "round": round_index,
            "base": {"name": "base", "arm": "base", "path": str(paths.student)},
            "models": models,
        },
    )
    out.evaluate = validate_section(EvaluateConfig, ev, "evaluate")
    return out


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A shallow copy of ``base`` with ``update``'s keys set (the run's links win over the section)."""
    merged = dict(base)
    merged.update(update)
    return merged


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` laid over it, nested mappings merged key by key (an arm's overrides)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class Progress:
    """One line when each stage of the run starts and one when it ends, with its wall time and the counts
    its manifest records (a stage finished by an earlier run is skipped by its own job and shows as up to
    date)."""

    def __init__(self, total: int) -> None:
        self.total, self.n, self.started = total, 0, time.time()

    @contextmanager
    def stage(self, name: str, folder: Path | None = None) -> Iterator[None]:
        self.n += 1
        before = _manifest_stamp(folder)
        with stage_line(name, self.n, self.total) as info:
            yield
            if folder is not None:
                after = _manifest_stamp(folder)
                info["summary"] = "up to date" if after is not None and after == before else manifest_summary(folder)


def _manifest_stamp(folder: Path | None) -> Any:
    if folder is None or not (folder / MANIFEST).is_file():
        return None
    return json.loads((folder / MANIFEST).read_text()).get("finished_at")


def manifest_summary(folder: Path, most: int = 5) -> str:
    """A stage's counts from its manifest, as ``answers 60, errors 31, gaps 2`` (the first ``most``)."""
    path = folder / MANIFEST
    if not path.is_file():
        return ""
    counts = json.loads(path.read_text()).get("counts", {})
    return ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in list(counts.items())[:most] if isinstance(v, int))


def _ensure_api_key(env: str) -> None:
    """A served endpoint always takes a key: make a random one for this process when none is set."""
    if not os.environ.get(env):
        os.environ[env] = secrets.token_urlsafe(24)


@contextmanager
def served(cfg: RunConfig, student: Path, name: str = STUDENT_NAME) -> Iterator[str]:
    """Serve the student (and the world teacher, unless the teacher is external) for the block."""
    from edray.serve import job as serve_job
    from edray.serve.config import ModelConfig, ServeConfig

    _ensure_api_key(cfg.serve.api_key_env)
    models = [ModelConfig(name=name, engine=cfg.serve.student_engine, path=str(student))]
    if cfg.serve.teacher_base_url is None:
        # The world teacher is a cheap oracle: a quarter CPU, as jobs/serve.yaml gives it.
        models.append(ModelConfig(name=cfg.serve.teacher_model, engine="edray.world.teacher:WorldTeacher",
                                  options=cfg.world.teacher.model_dump(exclude={"model_id"}), num_cpus=0.25))
    scfg = ServeConfig(
        models=models, host=cfg.serve.host, port=cfg.serve.port, api_key_env=cfg.serve.api_key_env, app_name="edray-run"
    )
    app = serve_job.start(scfg)
    try:
        yield app.base_url
    finally:
        serve_job.stop()


def _tuned_student(run_dir: Path, round_index: int, base: Path) -> Path:
    """The model folder round k+1 starts from: round k's full model, or its adapter merged into ``base``."""
    from edray.train.export import merge_adapter
    from edray.schemas import TRAIN_ADAPTER, TRAIN_MODEL

    train_dir = StageDir(run_dir, "train", round_index).path
    if (train_dir / TRAIN_MODEL / "config.json").is_file():
        return train_dir / TRAIN_MODEL
    merged = Stage(StageDir(run_dir, "student", round_index), {"base": str(base)}, inputs=[train_dir])
    return run_stage(merged, lambda tmp: merge_adapter(str(base), str(train_dir / TRAIN_ADAPTER), tmp))


def prepare(cfg: RunConfig, run_dir: Path, progress: Progress, force: bool = False) -> RunPaths:
    """World and student: generate/pretrain them unless given (both are cached by config)."""
    from edray.world import job as world_job
    from edray.world.pretrain import pretrain_student, recipe_fingerprint

    if cfg.world_dir is None:
        with progress.stage("world: generate the skills world"):
            world_dir = world_job.run(cfg.world, run_dir / "world", force=force)
    else:
        # Absolute: the arms' trials run in their own working folders.
        world_dir = Path(cfg.world_dir).resolve()
        if not (world_dir / WORLD_POOL_DIR).exists():
            raise ConfigError(f"world_dir: {world_dir} holds no {WORLD_POOL_DIR}/ (generate one with `edray world generate`)")
    if cfg.student is None:
        with progress.stage("student: pretrain the generic student (cached by config)"):
            fp = recipe_fingerprint(cfg.pretrain)[:16]
            student = pretrain_student(cfg.pretrain, Path(cfg.student_cache) / fp)
    else:
        student = Path(cfg.student).resolve()
        if not (student / "config.json").is_file():
            raise ConfigError(f"student: {student} is not a model folder (no config.json)")
    return RunPaths(run_dir=run_dir, world_dir=world_dir, student=student)


def shared_index(index_dir: Path, pool: Path) -> None:
    """Check that another run's index stage is complete and indexes this run's pool.

    Raises:
        ConfigError: the folder holds no completed index stage, or it indexed another pool.
    """
    from edray.schemas import INDEX_INFO

    manifest = index_dir / MANIFEST
    if not (index_dir / INDEX_INFO).is_file() or not manifest.is_file():
        raise ConfigError(f"index_dir: {index_dir} holds no completed index stage (run the run that builds it first)")
    indexed = json.loads(manifest.read_text()).get("config", {}).get("pool")
    if indexed is None or Path(indexed).resolve() != Path(pool).resolve():
        raise ConfigError(f"index_dir: {index_dir} indexes the pool {indexed}, not this run's {pool}")


def world_checks(cfg: RunConfig, run_dir: Path, round_index: int) -> list[Any]:
    """The skills world's checks of the run (edray.world.checks), printed and kept in ``<run-dir>/checks``.

    They say why the method did or did not help (student gaps, located steps, selection precision,
    headroom of the oracle arm over random); a failing check is reported, never fatal to the run.
    """
    from edray.world import checks

    try:
        inputs = checks.run_dir_inputs(run_dir, round_index)
    except FileNotFoundError as exc:
        log.warning("world checks skipped: %s", exc)
        return []
    inputs.pop("gap_source")
    first = {s: next((a.name for a in cfg.arms if a.strategy == s), None) for s in ("oracle", "random")}
    results = checks.run_checks(run_dir / "checks", **inputs, oracle_model=first["oracle"], random_model=first["random"])
    console.print(checks.format_checks(results), highlight=False, markup=False)
    return results


def run(cfg: RunConfig, run_dir: str | os.PathLike[str], force: bool = False) -> Path:
    """Run the whole method; every finished stage is skipped on a re-run.

    Args:
        cfg: the run config.
        run_dir: the run folder.
        force: re-run every stage (world and student caches included).

    Returns:
        The run folder.
    """
    from edray.diagnose import job as diagnose_job
    from edray.evaluate import job as evaluate_job
    from edray.index import job as index_job
    from edray.pipeline import arms as arms_runner
    from edray.report import job as report_job

    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    # Inside `ray job submit` (or with RAY_ADDRESS set) join that cluster; otherwise start a private one of
    # this machine's real size: every stage sizes its pools from it and checks its plan against it.
    ensure_ray()
    # The config the run was started with, for whoever reads the folder later (report, result tables).
    tmp = run_dir / f".{RUN_CONFIG}.tmp"
    tmp.write_text(cfg.model_dump_json(indent=2))
    os.replace(tmp, run_dir / RUN_CONFIG)
    # world and student (each only when generated here), index, then per round: diagnose, the arms as Tune
    # trials (round 0 runs every arm, later rounds the main arm only) and the collected evaluation; the report
    prepared = int(cfg.world_dir is None) + int(cfg.student is None)
    total = prepared + 1 + cfg.rounds * 3 + int(cfg.report)
    progress = Progress(total)
    paths = prepare(cfg, run_dir, progress, force)
    base = paths.student
    current = base
    base_url = f"http://{cfg.serve.host}:{cfg.serve.port}/v1"

    for k in range(cfg.rounds):
        stages = stage_configs(cfg, paths, k, base_url, student=current)
        if k == 0 and cfg.index_dir:
            with progress.stage(f"index: shared from {cfg.index_dir}"):
                shared_index(Path(cfg.index_dir), paths.pool)
        elif k == 0:
            with progress.stage("index: annotate, embed and index the supporting pool", index_job.stage(stages.index, run_dir).path):
                index_job.run(stages.index, run_dir, force=force)
        diagnosis = diagnose_job.stage(stages.diagnose, run_dir)
        with progress.stage(f"round {k}: diagnose the student", diagnosis.path):
            if force or not diagnosis.done():
                with served(cfg, current, stages.diagnose.student.client.model):
                    diagnose_job.run(stages.diagnose, run_dir, force=force)
        n_arms = len(cfg.arms) if k == 0 else 1
        works = arms_runner.round_works(cfg, stages, paths, k, current)
        with progress.stage(f"round {k}: {n_arms} arm(s) and the base as Tune trials (select, train, evaluate)"):
            records = arms_runner.run_arms(works, run_dir, k, force=force)
            arms_runner.write_arms_table(run_dir, records)
        failed = [r for r in records if r.get("status") != "ok"]
        ok_names = {r["arm"] for r in records if r.get("status") == "ok"}
        ev = stages.evaluate.model_copy(update={"models": [m for m in stages.evaluate.models if m.name in ok_names]})
        with progress.stage(f"round {k}: collect the evaluations", evaluate_job.stage(ev, run_dir).path):
            if arms_runner.BASE in ok_names:
                evaluate_job.collect(ev, run_dir, arms_runner.eval_parts(works, records), force=force)
        if failed:
            if cfg.report:
                report_job.write_report(run_dir)
            lines = "; ".join(f"{r['arm']}: {r.get('error')}" for r in failed)
            raise ArmsFailed(f"round {k}: {len(failed)} of {len(records)} trials failed ({lines}). The others are in "
                             f"{run_dir / arms_runner.ARMS_TABLE}; re-run the same command to retry the failed ones.")
        if k + 1 < cfg.rounds:
            current = _tuned_student(run_dir, k, current)

    if (paths.world_dir / WORLD_INFO).is_file():
        world_checks(cfg, run_dir, cfg.rounds - 1)
    if cfg.report:
        with progress.stage("report: write report.html"):
            out = report_job.write_report(run_dir)
        console.print(f"report: {out}")
    return run_dir
