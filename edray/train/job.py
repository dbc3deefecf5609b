"""The train stage on Ray Train: fine-tune the student on the selected supporting samples.

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

Resumption: checkpoints go to ``<storage_path>/train-<fingerprint>``; re-running the same command after
a crash continues from the latest checkpoint (Ray Train V2 restores a run by name and storage path),
and ``FailureConfig(max_failures)`` restarts a failed worker group from it within one run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from edray.resources import ClusterShape, ResourcePlan, workers_plan
from edray.rundir import Stage, StageDir, run_stage
from edray.schemas import QUARANTINE, TRAIN_METRICS
from edray.train.config import TrainConfig
from edray.train.datasets import STAGE, prepare_datasets
from edray.train.export import export_model

_CKPT_STATE = "state.json"
_CKPT_TRAINABLE = "trainable.safetensors"
_CKPT_OPTIM = "optimizer.pt"
_CKPT_SCHED = "scheduler.pt"
_CKPT_SPIDER = "spider.safetensors"
_CKPT_METRICS = "metrics.parquet"
_CKPT_EXPORT = "export"

StepHook = Callable[[int, int], None]


# ----------------------------------------------------------------------------------------------
# The training loop (runs on every Ray Train worker)
# ----------------------------------------------------------------------------------------------


def _build_model(cfg: TrainConfig, student: str) -> tuple[Any, Any]:
    """Load the student and make only the configured parameters trainable (LoRA wraps it in peft)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from edray.train.core import select_full_trainable

    processor = AutoProcessor.from_pretrained(student, trust_remote_code=cfg.trust_remote_code)
    # fp32 master weights in every mode; bf16 only inside autocast (docs/method.md §2: SPIDER state in fp32)
    model = AutoModelForImageTextToText.from_pretrained(
        student, trust_remote_code=cfg.trust_remote_code, dtype=torch.float32
    )
    if cfg.mode == "lora":
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(
            r=cfg.lora.rank,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.targets,
            modules_to_save=["multi_modal_projector"] if cfg.lora.train_projector else None,
            bias="none",
        )
        model = get_peft_model(model, lcfg)
    else:
        select_full_trainable(
            model, cfg.full.last_n_layers, cfg.full.train_projector, cfg.full.train_vision
        )
    return model, processor


def _step_seed(seed: int, step: int, rank: int) -> int:
    # Re-seeding per optimizer step makes dropout a function of (seed, step, rank): a resumed run
    # draws the same masks as an uninterrupted one without checkpointing RNG states.
    return (seed * 1_000_003 + step * 10_007 + rank) % (2**63 - 1)


def _iter_micro_batches(shard: Any, batch_size: int, epoch: int, seed: int, skip: int) -> Iterator[list[dict[str, Any]]]:
    it = shard.iter_batches(
        batch_size=batch_size,
        batch_format="pyarrow",
        drop_last=True,
        local_shuffle_buffer_size=batch_size * 4,
        local_shuffle_seed=seed * 7919 + epoch,
    )
    for i, batch in enumerate(it):
        if i < skip:
            continue
        yield batch.to_pylist()


def train_func(loop_config: dict[str, Any]) -> None:
    """Ray Train worker loop: load, restore, train with accumulation/clipping/SPIDER, checkpoint, export.

    ``loop_config`` keys: ``train`` (a :class:`TrainConfig` dump), ``student`` (folder),
    ``rows_per_worker`` (int) and optionally ``on_step`` (a callable ``(step, rank)`` run after each
    optimizer step, for monitoring or fault injection).
    """
    import ray.train
    import ray.train.torch
    import torch
    from safetensors.torch import load_file, save_file

    from edray.train.core import all_reduce_sum, answer_loss, collate_rows, global_grad_norm, layer_group, lr_factor
    from edray.train.spider import SpiderState

    cfg = TrainConfig.model_validate(loop_config["train"])
    student = loop_config["student"]
    on_step: StepHook | None = loop_config.get("on_step")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    device = ray.train.torch.get_device()
    use_autocast = cfg.use_gpu and device.type == "cuda"

    model, processor = _build_model(cfg, student)
    model.to(device)
    named_trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named_trainable]

    spe = (loop_config["rows_per_worker"] // cfg.batch_size) // cfg.grad_accum  # optimizer steps per epoch
    total_steps = cfg.max_steps or cfg.epochs * spe
    optimizer = torch.optim.AdamW(
        params, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, cfg.optim.warmup_steps, cfg.optim.schedule)
    )
    spider = SpiderState.from_parameters(named_trainable) if cfg.mode == "spider" else None

    step, epoch, micro_in_epoch, samples_seen = 0, 0, 0, 0
    history: list[dict[str, Any]] = []
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            d = Path(d)
            state = json.loads((d / _CKPT_STATE).read_text())
            trained = load_file(str(d / _CKPT_TRAINABLE))
            with torch.no_grad():
                for n, p in named_trainable:
                    p.copy_(trained[n].to(device))
            optimizer.load_state_dict(torch.load(d / _CKPT_OPTIM, map_location=device, weights_only=True))
            scheduler.load_state_dict(torch.load(d / _CKPT_SCHED, weights_only=True))
            if spider is not None:
                # θ0 and G come from the checkpoint, never from the resumed weights (docs/method.md §2)
                spider = SpiderState.from_state_dict(load_file(str(d / _CKPT_SPIDER)), device=device)
            history = pq.read_table(d / _CKPT_METRICS).to_pylist() if (d / _CKPT_METRICS).exists() else []
            step, epoch = state["step"], state["epoch"]
            micro_in_epoch, samples_seen = state["micro_in_epoch"], state["samples_seen"]

    ddp = ray.train.torch.prepare_model(model) if world > 1 else model
    shard = ray.train.get_dataset_shard(f"train_{rank}")

    def save(export: bool) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt_obj = None
            if rank == 0:
                d = Path(tmp)
                save_file({n: p.detach().cpu().contiguous() for n, p in named_trainable}, str(d / _CKPT_TRAINABLE))
                torch.save(optimizer.state_dict(), d / _CKPT_OPTIM)
                torch.save(scheduler.state_dict(), d / _CKPT_SCHED)
                if spider is not None:
                    save_file({k: v.cpu() for k, v in spider.state_dict().items()}, str(d / _CKPT_SPIDER))
                state = {"step": step, "epoch": epoch, "micro_in_epoch": micro_in_epoch, "samples_seen": samples_seen}
                (d / _CKPT_STATE).write_text(json.dumps(state))
                if history:
                    pq.write_table(pa.Table.from_pylist(history), d / _CKPT_METRICS)
                if export:
                    export_model(model, processor, cfg, d / _CKPT_EXPORT)
                ckpt_obj = ray.train.Checkpoint.from_directory(tmp)
            last = history[-1] if history else {}
            ray.train.report({"step": step, "loss": last.get("loss", float("nan"))}, checkpoint=ckpt_obj)

    micro_per_epoch = spe * cfg.grad_accum
    while step < total_steps:
        batches = _iter_micro_batches(shard, cfg.batch_size, epoch, cfg.seed, micro_in_epoch)
        while step < total_steps and micro_in_epoch < micro_per_epoch:
            t0 = time.perf_counter()
            torch.manual_seed(_step_seed(cfg.seed, step, rank))
            ddp.train()
            loss_acc = torch.zeros(2, dtype=torch.float64)
            for k in range(cfg.grad_accum):
                rows = next(batches)
                batch = {key: v.to(device) for key, v in collate_rows(processor, rows, cfg.max_length).items()}
                labels = batch.pop("labels")
                sync = k == cfg.grad_accum - 1 or world == 1
                ctx_mgr = ddp.no_sync() if not sync and hasattr(ddp, "no_sync") else contextlib.nullcontext()
                with ctx_mgr, torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
                    logits = ddp(**batch).logits
                    loss_sum, n_tok = answer_loss(logits, labels)
                    loss = loss_sum / n_tok.clamp(min=1) / cfg.grad_accum
                    loss.backward()
                loss_acc += torch.tensor([float(loss_sum.detach()), float(n_tok)], dtype=torch.float64)
                micro_in_epoch += 1
            if cfg.optim.max_grad_norm > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm))
            else:
                grad_norm = global_grad_norm(params)
            if spider is not None:
                # after accumulation and clipping, before the gradients are zeroed (docs/method.md §2)
                spider.capture(named_trainable)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            densities = spider.apply(named_trainable) if spider is not None else {}
            optimizer.zero_grad(set_to_none=True)
            step += 1
            samples_seen += cfg.batch_size * cfg.grad_accum * world
            if world > 1:
                loss_acc = all_reduce_sum(loss_acc)
            dt = time.perf_counter() - t0
            row: dict[str, Any] = {
                "step": step,
                "epoch": epoch,
                "loss": float(loss_acc[0] / max(loss_acc[1], 1.0)),
                "lr": lr,
                "grad_norm": grad_norm,
                "samples_per_s": cfg.batch_size * cfg.grad_accum * world / dt,
                "samples_seen": samples_seen,
                "step_s": dt,
            }
            if densities:
                groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
                for name, (kept, n) in densities.items():
                    g = groups[layer_group(name)]
                    g[0] += kept
                    g[1] += n
                row["mask_density"] = sum(k for k, _ in groups.values()) / sum(n for _, n in groups.values())
                for g, (kept, n) in sorted(groups.items()):
                    row[f"mask_density.{g}"] = kept / n
            history.append(row)
            if rank == 0 and (step % cfg.log_every == 0 or step == total_steps):
                extra = f" mask {row['mask_density']:.3f}" if "mask_density" in row else ""
                print(
                    f"[train] step {step}/{total_steps} epoch {epoch} loss {row['loss']:.4f} lr {lr:.2e} "
                    f"grad_norm {grad_norm:.3f} {row['samples_per_s']:.1f} samples/s{extra}",
                    flush=True,
                )
            if on_step is not None:
                on_step(step, rank)
            if step % cfg.checkpoint_every == 0 and step < total_steps:
                save(export=False)
        if micro_in_epoch >= micro_per_epoch:
            epoch += 1
            micro_in_epoch = 0
    save(export=True)


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


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
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    student_p, selection_p = Path(student), Path(selection)
    pool_p = Path(pool) if pool is not None else None
    if not (student_p / "config.json").is_file():
        raise ValueError(f"student {student_p} is not a model folder (no config.json)")
    inputs = [student_p, selection_p] + ([pool_p] if pool_p is not None else [])
    st = Stage(StageDir(Path(run_dir), STAGE, round_index), cfg, inputs=inputs)
    storage = cfg.storage_path or str((st.path.parent / "train_checkpoints").resolve())
    name = f"train-{st.fingerprint[:16]}"
    if force and "://" not in storage:
        shutil.rmtree(Path(storage) / name, ignore_errors=True)
    repo_root = str(Path(__file__).resolve().parents[2])

    def compute(tmp: Path) -> None:
        started = time.time()
        shards, quarantine, rows_per_worker = prepare_datasets(cfg, student_p, selection_p, pool_p)
        datasets = {f"train_{i}": s for i, s in enumerate(shards)}
        pythonpath = os.pathsep.join(p for p in (repo_root, os.environ.get("PYTHONPATH")) if p)
        trainer = TorchTrainer(
            train_func,
            train_loop_config={
                "train": cfg.model_dump(mode="json"),
                "student": str(student_p.resolve()),
                "rows_per_worker": rows_per_worker,
                "on_step": on_step,
            },
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
            datasets=datasets,
            dataset_config=ray.train.DataConfig(datasets_to_split=[]),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(f"training finished without a checkpoint under {storage}/{name}")
        with result.checkpoint.as_directory() as d:
            d = Path(d)
            export = d / _CKPT_EXPORT
            for child in export.iterdir():
                shutil.copytree(child, tmp / child.name)
            metrics = pq.read_table(d / _CKPT_METRICS)
            pq.write_table(metrics, tmp / TRAIN_METRICS)
            pq.write_table(quarantine, tmp / QUARANTINE)
            state = json.loads((d / _CKPT_STATE).read_text())
        st.dir.counts.update(
            {
                "rows": rows_per_worker * cfg.num_workers,
                "quarantined": quarantine.num_rows,
                "steps": int(state["step"]),
                "samples_seen": int(state["samples_seen"]),
            }
        )
        losses = metrics["loss"].to_pylist()
        st.dir.metrics.update(
            {
                "final_loss": losses[-1] if losses else None,
                "first_loss": losses[0] if losses else None,
                "mean_samples_per_s": float(sum(metrics["samples_per_s"].to_pylist()) / max(1, metrics.num_rows)),
                "wall_s": round(time.time() - started, 2),
            }
        )

    def plan(shape: ClusterShape) -> ResourcePlan:
        return workers_plan("train", cfg.num_workers, cfg.cpus_per_worker, 1.0 if cfg.use_gpu else 0.0)

    path = run_stage(st, compute, force=force, plan=plan)
    if "://" not in storage:
        # The exported model is in the stage folder now; the resumable checkpoints are no longer needed.
        shutil.rmtree(Path(storage) / name, ignore_errors=True)
    return path
