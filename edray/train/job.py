"""The train stage: fine-tune the student on the selected supporting samples, on Ray Train or in process.

Inputs:
- the student: a transformers folder (safetensors + processor), e.g. from ``edray.world.student``;
- the selection: a Parquet table with an ``id`` column (the select stage's ``selection.parquet``);
  when it lacks ``images``/``messages`` they are joined by ``id`` from the supporting pool (a Parquet
  file or folder, or a Lance dataset) in :data:`edray.schemas.SUPPORT_SCHEMA`.

Outputs in ``runs/<run>/round_<k>/train/``: ``adapter/`` (peft LoRA, safetensors) or ``model/`` (full
model), each with the processor; ``metrics.parquet`` (one row per optimizer step);
``quarantine.parquet`` (selected rows that could not be trained on, with the reason);
``manifest.json`` and ``_SUCCESS``.

Command::

    edray train --config jobs/train.yaml --student runs/x/student --selection runs/x/round_0/select/selection.parquet \\
        --pool runs/x/index/pool.lance --run-dir runs/x

Where the loop runs (``runner``): several workers or a GPU run on a Ray Train ``TorchTrainer``; one CPU
worker runs in the calling process by default, without Ray Train's start-up (the same loop,
:mod:`edray.train.loop`).

Resumption: checkpoints go to ``<storage_path>/train-<fingerprint>``; re-running the same command after
a crash continues from the latest checkpoint (Ray Train V2 restores a run by name and storage path; the
in-process runner reads the same folder), and on Ray Train ``FailureConfig(max_failures)`` restarts a
failed worker group from it within one run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from edray.resources import ClusterShape, ResourcePlan, workers_plan
from edray.rundir import Stage, StageDir, run_stage
from edray.schemas import QUARANTINE, TRAIN_METRICS
from edray.train.config import TrainConfig
from edray.train.datasets import STAGE, prepare_datasets, prepare_local
from edray.train.loop import CKPT_EXPORT, CKPT_METRICS, CKPT_STATE, LocalContext, StepHook, ray_train_func, train_loop


def stage(
    cfg: TrainConfig,
    run_dir: str | os.PathLike[str],
    student: str | os.PathLike[str],
    selection: str | os.PathLike[str],
    pool: str | os.PathLike[str] | None = None,
    round_index: int = 0,
) -> Stage:
    """The train stage's identity: ``round_<k>/train``, keyed by the config, student, selection and pool."""
    inputs: Sequence[Path] = [Path(student), Path(selection)] + ([Path(pool)] if pool is not None else [])
    return Stage(StageDir(Path(run_dir), STAGE, round_index), cfg, inputs=inputs)


def run(
    cfg: TrainConfig,
    run_dir: str | os.PathLike[str],
    student: str | os.PathLike[str],
    selection: str | os.PathLike[str],
    pool: str | os.PathLike[str] | None = None,
    round_index: int = 0,
    force: bool = False,
    on_step: StepHook | None = None,
) -> Path:
    """Run the train stage; skip it when an identical run already committed.

    Args:
        cfg: the train config.
        run_dir: the run folder (``runs/<run>``).
        student: the student model folder.
        selection: the selection Parquet (``id`` column; ``images``/``messages`` optional).
        pool: the supporting pool (Parquet or Lance), needed when the selection holds ids only.
        round_index: the round this training belongs to.
        force: re-run even if the stage completed with the same config and inputs.
        on_step: a picklable ``(step, rank)`` callable run on every worker after each optimizer step.

    Returns:
        The stage folder.

    Raises:
        ValueError: bad inputs (see :func:`prepare_datasets`).
        ray.train.TrainingFailedError: training failed more often than ``max_failures`` allows.
    """
    student_p, selection_p = Path(student), Path(selection)
    pool_p = Path(pool) if pool is not None else None
    if not (student_p / "config.json").is_file():
        raise ValueError(f"student {student_p} is not a model folder (no config.json)")
    st = stage(cfg, run_dir, student_p, selection_p, pool_p, round_index)
    storage = cfg.storage_path or str((st.path.parent / "train_checkpoints").resolve())
    name = f"train-{st.fingerprint[:16]}"
    if force and "://" not in storage:
        shutil.rmtree(Path(storage) / name, ignore_errors=True)

    def compute(tmp: Path) -> None:
        started = time.time()
        loop_config = {"train": cfg.model_dump(mode="json"), "student": str(student_p.resolve()), "on_step": on_step}
        if cfg.in_process:
            if "://" in storage:
                raise ValueError(f"storage_path {storage}: the in-process runner keeps checkpoints on a local path")
            quarantine, n_rows, final = _fit_in_process(cfg, student_p, selection_p, pool_p, Path(storage) / name, loop_config)
        else:
            quarantine, n_rows, final = _fit_ray_train(cfg, student_p, selection_p, pool_p, storage, name, loop_config)
        with final as d:
            for child in (d / CKPT_EXPORT).iterdir():
                shutil.copytree(child, tmp / child.name)
            metrics = pq.read_table(d / CKPT_METRICS)
            pq.write_table(metrics, tmp / TRAIN_METRICS)
            pq.write_table(quarantine, tmp / QUARANTINE)
            state = json.loads((d / CKPT_STATE).read_text())
        st.dir.counts.update(
            {
                "rows": n_rows,
                "quarantined": quarantine.num_rows,
                "steps": int(state["step"]),
                "samples_seen": int(state["samples_seen"]),
            }
        )
        losses = metrics["loss"].to_pylist()
        st.dir.metrics.update(
            {
                "runner": "in_process" if cfg.in_process else "ray_train",
                "final_loss": losses[-1] if losses else None,
                "first_loss": losses[0] if losses else None,
                "mean_samples_per_s": float(sum(metrics["samples_per_s"].to_pylist()) / max(1, metrics.num_rows)),
                "wall_s": round(time.time() - started, 2),
            }
        )

    def plan(shape: ClusterShape) -> ResourcePlan:
        return workers_plan("train", cfg.num_workers, cfg.cpus_per_worker, 1.0 if cfg.use_gpu else 0.0)

    # The in-process runner needs no Ray (and, inside an arm's trial, already holds its CPU).
    path = run_stage(st, compute, force=force, plan=None if cfg.in_process else plan)
    if "://" not in storage:
        # The exported model is in the stage folder now; the resumable checkpoints are no longer needed.
        shutil.rmtree(Path(storage) / name, ignore_errors=True)
    return path


def _fit_in_process(
    cfg: TrainConfig, student: Path, selection: Path, pool: Path | None, storage: Path, loop_config: dict[str, Any]
) -> tuple[Any, int, Any]:
    """Train in this process; the result is the final checkpoint folder under ``storage``."""
    from edray.train.model import build_model

    rows, quarantine, n_rows = prepare_local(cfg, student, selection, pool)
    ctx = LocalContext(rows, storage, keep=cfg.keep_checkpoints)
    # Arms trained one after another in one process share the loaded student (copies of it).
    loop_config = {**loop_config, "rows_per_worker": n_rows, "model": lambda: build_model(cfg, str(student), share=True)}
    train_loop(loop_config, ctx)
    final = ctx.checkpoints()
    if not final or not (final[-1] / CKPT_EXPORT).is_dir():
        raise RuntimeError(f"training finished without an exported checkpoint under {storage}")
    return quarantine, n_rows, contextlib.nullcontext(final[-1])


def _fit_ray_train(
    cfg: TrainConfig, student: Path, selection: Path, pool: Path | None, storage: str, name: str, loop_config: dict[str, Any]
) -> tuple[Any, int, Any]:
    """Train on a Ray Train worker group; the result is the run's final checkpoint."""
    import ray.train
    from ray.train.torch import TorchTrainer

    shards, quarantine, rows_per_worker = prepare_datasets(cfg, student, selection, pool)
    repo_root = str(Path(__file__).resolve().parents[2])
    pythonpath = os.pathsep.join(p for p in (repo_root, os.environ.get("PYTHONPATH")) if p)
    trainer = TorchTrainer(
        ray_train_func,
        train_loop_config={**loop_config, "rows_per_worker": rows_per_worker},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            worker_runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
        ),
        datasets={f"train_{i}": s for i, s in enumerate(shards)},
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training finished without a checkpoint under {storage}/{name}")
    return quarantine, rows_per_worker * cfg.num_workers, _as_directory(result.checkpoint)


def _as_directory(checkpoint: Any) -> Any:
    """The checkpoint as a local folder for the block (a context manager yielding a ``Path``)."""

    @contextlib.contextmanager
    def local() -> Any:
        with checkpoint.as_directory() as d:
            yield Path(d)

    return local()
