"""The fine-tuning loop, one function for one worker and for many.

:func:`train_loop` is the whole loop: load, restore, train with accumulation / clipping / SPIDER,
checkpoint, export. What differs between running it on a Ray Train worker group and running it in the
calling process is behind a small :class:`LoopContext`:

- :class:`RayTrainContext` (inside ``TorchTrainer``): rank and world from Ray Train, DDP, the worker's
  Ray Data shard, checkpoints reported to Ray Train;
- :class:`LocalContext` (one CPU worker, no GPU): rank 0 of 1, the selection as an in-memory Arrow
  table, checkpoints written to a folder. It has no distributed start-up (no controller, placement
  group or worker group), which is most of the wall time of a small arm; see docs/train.md.

Both contexts restore from the latest checkpoint of the same run name, so a killed run resumes where it
stopped either way.
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
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from edray.train.config import TrainConfig

CKPT_STATE = "state.json"
CKPT_TRAINABLE = "trainable.safetensors"
CKPT_OPTIM = "optimizer.pt"
CKPT_SCHED = "scheduler.pt"
CKPT_SPIDER = "spider.safetensors"
CKPT_METRICS = "metrics.parquet"
CKPT_EXPORT = "export"

StepHook = Callable[[int, int], None]


class LoopContext(Protocol):
    """Where the loop runs: its rank, device, data, and where checkpoints go."""

    rank: int
    world: int

    def device(self) -> Any: ...

    def prepare_model(self, model: Any) -> Any: ...

    def latest_checkpoint(self) -> contextlib.AbstractContextManager[Path | None]: ...

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None: ...

    def micro_batches(self, batch_size: int, epoch: int, seed: int, skip: int) -> Iterator[list[dict[str, Any]]]: ...


class RayTrainContext:
    """The loop on a Ray Train worker: Ray Train's rank, DDP, the worker's dataset shard ``train_<rank>``."""

    def __init__(self) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()

    def device(self) -> Any:
        import ray.train.torch

        return ray.train.torch.get_device()

    def prepare_model(self, model: Any) -> Any:
        import ray.train.torch

        return ray.train.torch.prepare_model(model) if self.world > 1 else model

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as d:
            yield Path(d)

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        import ray.train

        obj = ray.train.Checkpoint.from_directory(str(checkpoint)) if checkpoint is not None else None
        ray.train.report(metrics, checkpoint=obj)

    def micro_batches(self, batch_size: int, epoch: int, seed: int, skip: int) -> Iterator[list[dict[str, Any]]]:
        import ray.train

        shard = ray.train.get_dataset_shard(f"train_{self.rank}")
        it = shard.iter_batches(
            batch_size=batch_size,
            batch_format="pyarrow",
            drop_last=True,
            local_shuffle_buffer_size=batch_size * 4,
            local_shuffle_seed=seed * 7919 + epoch,
        )
        for i, batch in enumerate(it):
            if i >= skip:
                yield batch.to_pylist()


class LocalContext:
    """The loop in the calling process: one CPU worker over an in-memory table.

    Checkpoints are folders ``<storage>/checkpoint_<step>`` written atomically (the newest
    ``keep`` are kept); the latest one is restored on start, as Ray Train restores a run by name.
    Each epoch visits the rows in a seeded permutation (a function of seed and epoch only, so a
    resumed run sees the same batches as an uninterrupted one).
    """

    rank, world = 0, 1

    def __init__(self, rows: pa.Table, storage: Path, keep: int = 2) -> None:
        self.rows, self.storage, self.keep = rows, Path(storage), keep
        self.storage.mkdir(parents=True, exist_ok=True)
        self.last_metrics: dict[str, Any] = {}

    def device(self) -> Any:
        import torch

        return torch.device("cpu")

    def prepare_model(self, model: Any) -> Any:
        return model

    def checkpoints(self) -> list[Path]:
        return sorted(p for p in self.storage.glob("checkpoint_*") if (p / CKPT_STATE).is_file())

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        found = self.checkpoints()
        yield found[-1] if found else None

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        self.last_metrics = dict(metrics)
        if checkpoint is None:
            return
        final = self.storage / f"checkpoint_{int(metrics['step']):09d}"
        staging = self.storage / f".{final.name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(checkpoint, staging)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        for old in self.checkpoints()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def micro_batches(self, batch_size: int, epoch: int, seed: int, skip: int) -> Iterator[list[dict[str, Any]]]:
        order = np.random.default_rng([seed, 7919, epoch]).permutation(self.rows.num_rows)
        for i in range(skip, self.rows.num_rows // batch_size):
            yield self.rows.take(pa.array(order[i * batch_size : (i + 1) * batch_size])).to_pylist()


def _step_seed(seed: int, step: int, rank: int) -> int:
    # Re-seeding per optimizer step makes dropout a function of (seed, step, rank): a resumed run
    # draws the same masks as an uninterrupted one without checkpointing RNG states.
    return (seed * 1_000_003 + step * 10_007 + rank) % (2**63 - 1)


def train_loop(loop_config: dict[str, Any], ctx: LoopContext) -> None:
    """The training loop: load, restore, train with accumulation/clipping/SPIDER, checkpoint, export.

    ``loop_config`` keys: ``train`` (a :class:`TrainConfig` dump), ``student`` (folder),
    ``rows_per_worker`` (int) and optionally ``on_step`` (a callable ``(step, rank)`` run after each
    optimizer step, for monitoring or fault injection) and ``model`` (a callable returning the built
    ``(model, processor)``, to reuse an already loaded student).
    """
    import torch
    from safetensors.torch import load_file, save_file

    from edray.train.core import all_reduce_sum, answer_loss, collate_rows, global_grad_norm, layer_group, lr_factor
    from edray.train.export import export_model
    from edray.train.model import build_model
    from edray.train.spider import SpiderState

    cfg = TrainConfig.model_validate(loop_config["train"])
    on_step: StepHook | None = loop_config.get("on_step")
    rank, world = ctx.rank, ctx.world
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    device = ctx.device()
    use_autocast = cfg.use_gpu and device.type == "cuda"

    build = loop_config.get("model") or (lambda: build_model(cfg, loop_config["student"]))
    model, processor = build()
    model.to(device)
    named_trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named_trainable]

    spe = (loop_config["rows_per_worker"] // cfg.batch_size) // cfg.grad_accum  # optimizer steps per epoch
    if spe < 1:
        # the data preparation repeats a small selection to fill one step (edray.train.datasets.repeats_needed)
        raise ValueError(f"{loop_config['rows_per_worker']} rows per worker fill no optimizer step")
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
    with ctx.latest_checkpoint() as d:
        if d is not None:
            state = json.loads((d / CKPT_STATE).read_text())
            trained = load_file(str(d / CKPT_TRAINABLE))
            with torch.no_grad():
                for n, p in named_trainable:
                    p.copy_(trained[n].to(device))
            optimizer.load_state_dict(torch.load(d / CKPT_OPTIM, map_location=device, weights_only=True))
            scheduler.load_state_dict(torch.load(d / CKPT_SCHED, weights_only=True))
            if spider is not None:
                # θ0 and G come from the checkpoint, never from the resumed weights (docs/method.md §2)
                spider = SpiderState.from_state_dict(load_file(str(d / CKPT_SPIDER)), device=device)
            history = pq.read_table(d / CKPT_METRICS).to_pylist() if (d / CKPT_METRICS).exists() else []
            step, epoch = state["step"], state["epoch"]
            micro_in_epoch, samples_seen = state["micro_in_epoch"], state["samples_seen"]

    ddp = ctx.prepare_model(model)

    def save(export: bool) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            out = None
            if rank == 0:
                out = Path(tmp)
                save_file({n: p.detach().cpu().contiguous() for n, p in named_trainable}, str(out / CKPT_TRAINABLE))
                torch.save(optimizer.state_dict(), out / CKPT_OPTIM)
                torch.save(scheduler.state_dict(), out / CKPT_SCHED)
                if spider is not None:
                    save_file({k: v.cpu() for k, v in spider.state_dict().items()}, str(out / CKPT_SPIDER))
                state = {"step": step, "epoch": epoch, "micro_in_epoch": micro_in_epoch, "samples_seen": samples_seen}
                (out / CKPT_STATE).write_text(json.dumps(state))
                if history:
                    pq.write_table(pa.Table.from_pylist(history), out / CKPT_METRICS)
                if export:
                    export_model(model, processor, cfg, out / CKPT_EXPORT)
            last = history[-1] if history else {}
            ctx.report({"step": step, "loss": last.get("loss", float("nan"))}, out)

    micro_per_epoch = spe * cfg.grad_accum
    while step < total_steps:
        batches = ctx.micro_batches(cfg.batch_size, epoch, cfg.seed, micro_in_epoch)
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


def ray_train_func(loop_config: dict[str, Any]) -> None:
    """``TorchTrainer``'s per-worker function: :func:`train_loop` in a :class:`RayTrainContext`."""
    train_loop(loop_config, RayTrainContext())
