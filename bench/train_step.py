"""Benchmark of the train stage's step: Ray Train vs. a plain PyTorch loop, SPIDER vs. full fine-tuning.

Usage::

    python bench/train_step.py [--steps 30] [--batch-size 8] [--out bench/train_step.json]

What it measures, on one tiny student (``StudentConfig()``: CLIP 128 x 2, Llama 128 x 2) and the same
rows of the world's supporting pool:

1. *Ray Train vs. plain PyTorch*: median step time of ``edray.train.job`` with one worker (``step_s`` in
   its metrics: data iteration + collate + forward/backward + optimizer) against the same work in a
   plain loop in this process (same config, same batches, same collate). Ratio = plain / Ray
   (throughput of Ray relative to plain; goal >= 0.9).
2. *SPIDER vs. full*: median step time of the plain loop with and without the SPIDER mask (goal <= 1.15).
3. *SPIDER memory*: bytes held beyond full fine-tuning (θ0 + G, fp32) against the trainable weights,
   and the peak of torch's allocator (``torch.profiler`` memory events) during one full step, one
   SPIDER step and one SPIDER ``apply`` alone (its transient R/I/M tensors, one tensor at a time).

Timings are ratios taken in the same run: absolute numbers depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch


def _setup(root: Path, rows: int) -> tuple[Path, Path]:
    from edray.world.pool import generate_support_rows
    from edray.world.skills import corpus_texts
    from edray.world.student import StudentConfig, build_student

    student = build_student(root / "student", StudentConfig(seed=0), corpus_texts(400, seed=0))
    pq.write_table(generate_support_rows(11, 0, rows), root / "selection.parquet")
    return student, root / "selection.parquet"


def _peak_bytes(fn: Any) -> int:
    """Peak bytes allocated by torch (CPU and CUDA) while ``fn`` runs, from the profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts, profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.time_range.start, e.cpu_memory_usage + getattr(e, "device_memory_usage", 0))
        for e in prof.events()
        if e.name == "[memory]"
    )
    cur = peak = 0
    for _, delta in events:
        cur += delta
        peak = max(peak, cur)
    return peak


def _plain_loop(cfg: Any, student: Path, rows: list[dict[str, Any]], steps: int, spider: bool) -> tuple[list[float], dict[str, Any]]:
    """The train stage's step without Ray: collate, forward/backward, clip, AdamW, optional SPIDER."""
    from edray.train.core import answer_loss, collate_rows
    from edray.train.job import _build_model
    from edray.train.spider import SpiderState

    torch.manual_seed(cfg.seed)
    model, processor = _build_model(cfg, str(student))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr)
    state = SpiderState.from_parameters(named) if spider else None
    times, b = [], cfg.batch_size
    info: dict[str, Any] = {"trainable_bytes": sum(p.numel() * 4 for p in params)}

    def one_step(step: int) -> None:
        batch = collate_rows(processor, rows[(step * b) % len(rows):][:b], cfg.max_length)
        labels = batch.pop("labels")
        loss_sum, n = answer_loss(model(**batch).logits, labels)
        (loss_sum / n.clamp(min=1)).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)
        if state is not None:
            state.capture(named)
        opt.step()
        if state is not None:
            state.apply(named)
        opt.zero_grad(set_to_none=True)

    for step in range(steps):
        t0 = time.perf_counter()
        one_step(step)
        times.append(time.perf_counter() - t0)
    # Peak of torch's allocator during one more step (activations, gradients, mask temporaries);
    # the persistent SPIDER state is allocated before and is reported separately.
    info["step_peak_bytes"] = _peak_bytes(lambda: one_step(steps))
    if state is not None:
        info["spider_state_bytes"] = state.extra_bytes()
        info["largest_tensor_bytes"] = max(p.numel() * 4 for p in params)
        info["apply_peak_bytes"] = _peak_bytes(lambda: state.apply(named))
    return times, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    import ray

    from edray.train import job
    from edray.train.config import TrainConfig

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows_n = args.batch_size * args.steps
        student, selection = _setup(root, rows_n)
        rows = pq.read_table(selection, columns=["id", "images", "messages"]).to_pylist()
        base = dict(batch_size=args.batch_size, max_steps=args.steps, torch_threads=args.threads, num_workers=1,
                    checkpoint_every=10_000, log_every=10_000, full={"last_n_layers": 2}, optim={"lr": 1e-4, "warmup_steps": 0})
        full_cfg = TrainConfig(mode="full", **base)
        spider_cfg = TrainConfig(mode="spider", **base)
        skip = 3  # warm-up steps left out of medians

        plain_full, mem_full = _plain_loop(full_cfg, student, rows, args.steps, spider=False)
        plain_spider, mem = _plain_loop(spider_cfg, student, rows, args.steps, spider=True)

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        t0 = time.perf_counter()
        stage = job.run(full_cfg, root / "run", student, selection)
        fit_s = time.perf_counter() - t0
        ray_full = pq.read_table(stage / "metrics.parquet")["step_s"].to_pylist()
        ray.shutdown()

    med = lambda xs: statistics.median(xs[skip:])  # noqa: E731
    result = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "plain_full_step_s": med(plain_full),
        "plain_spider_step_s": med(plain_spider),
        "ray_full_step_s": med(ray_full),
        "ray_fit_wall_s": fit_s,
        "ray_vs_plain_throughput": med(plain_full) / med(ray_full),
        "spider_vs_full_step_time": med(plain_spider) / med(plain_full),
        "trainable_bytes": mem["trainable_bytes"],
        "spider_state_bytes": mem["spider_state_bytes"],
        "spider_state_vs_trainable": mem["spider_state_bytes"] / mem["trainable_bytes"],
        "largest_tensor_bytes": mem["largest_tensor_bytes"],
        "apply_peak_bytes": mem["apply_peak_bytes"],
        "full_step_peak_bytes": mem_full["step_peak_bytes"],
        "spider_step_peak_bytes": mem["step_peak_bytes"],
        # extra memory of SPIDER over full at its peak: persistent state + extra in-step transients
        "spider_extra_peak_vs_trainable": (
            mem["spider_state_bytes"] + max(0, mem["step_peak_bytes"] - mem_full["step_peak_bytes"])
        ) / mem["trainable_bytes"],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
