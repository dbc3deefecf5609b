"""Benchmark of the train stage's step: Ray Train vs. a plain PyTorch loop, SPIDER vs. full fine-tuning.

Usage::

    python bench/train_step.py [--steps 30] [--batch-size 8] [--out bench/train_step.json]

What it measures, on one tiny student (``StudentConfig()``: CLIP 128 x 2, Llama 128 x 2) and the same
rows of the world's supporting pool:

1. *Ray Train vs. plain PyTorch*: median step time of ``edray.train.job`` with one worker on Ray Train
   (``step_s`` in its metrics: data iteration + collate + forward/backward + optimizer) against the same
   work in a plain loop in this process (same config, same batches, same collate). Ratio = plain / Ray
   (throughput of Ray relative to plain; goal >= 0.9). The same for the in-process runner (the default
   for one CPU worker), and both fits' wall times, start-up included.
2. *SPIDER vs. full*: median step time of the plain loop with and without the SPIDER mask, steps
   alternating between the two models (goal <= 1.15), and the time of SPIDER's capture + apply alone.
3. *SPIDER memory*: bytes held beyond full fine-tuning (θ0 + G, fp32, from the state's own
   accounting) against the trainable weights. The mask's transients (R, I_pre, I_ft, M) live for one
   tensor at a time, so they are bounded by a few copies of the largest trainable tensor (reported).

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


class _PlainLoop:
    """The train stage's step without Ray: collate, forward/backward, clip, AdamW, optional SPIDER."""

    def __init__(self, cfg: Any, student: Path, rows: list[dict[str, Any]], spider: bool) -> None:
        from edray.train.model import build_model
        from edray.train.spider import SpiderState

        torch.manual_seed(cfg.seed)
        self.cfg, self.rows = cfg, rows
        self.model, self.processor = build_model(cfg, str(student))
        self.named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.optim.lr)
        self.state = SpiderState.from_parameters(self.named) if spider else None
        self.spider_s = 0.0

    def step(self, step: int) -> float:
        from edray.train.core import answer_loss, collate_rows

        t0 = time.perf_counter()
        b = self.cfg.batch_size
        batch = collate_rows(self.processor, self.rows[(step * b) % len(self.rows):][:b], self.cfg.max_length)
        labels = batch.pop("labels")
        loss_sum, n = answer_loss(self.model(**batch).logits, labels)
        (loss_sum / n.clamp(min=1)).backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.max_grad_norm)
        t1 = time.perf_counter()
        if self.state is not None:
            self.state.capture(self.named)
        t2 = time.perf_counter()
        self.opt.step()
        t3 = time.perf_counter()
        if self.state is not None:
            self.state.apply(self.named)
        t4 = time.perf_counter()
        self.spider_s = (t2 - t1) + (t4 - t3)
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0


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

        # Full and SPIDER steps alternate on the same batches so that load drift hits both alike.
        full_loop = _PlainLoop(full_cfg, student, rows, spider=False)
        spider_loop = _PlainLoop(spider_cfg, student, rows, spider=True)
        plain_full, plain_spider, spider_only = [], [], []
        for step in range(args.steps):
            plain_full.append(full_loop.step(step))
            plain_spider.append(spider_loop.step(step))
            spider_only.append(spider_loop.spider_s)
        state = spider_loop.state
        trainable_bytes = sum(p.numel() * 4 for p in spider_loop.params)

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        t0 = time.perf_counter()
        # one worker would run in process by default; this measures Ray Train's step and start-up
        stage = job.run(full_cfg.model_copy(update={"runner": "ray_train"}), root / "run", student, selection)
        fit_s = time.perf_counter() - t0
        ray_full = pq.read_table(stage / "metrics.parquet")["step_s"].to_pylist()
        ray.shutdown()
        # the same fit in this process (runner in_process, the default for one CPU worker)
        t0 = time.perf_counter()
        stage = job.run(full_cfg.model_copy(update={"runner": "in_process"}), root / "run_in_process", student, selection)
        in_process_fit_s = time.perf_counter() - t0
        in_process_full = pq.read_table(stage / "metrics.parquet")["step_s"].to_pylist()

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
        "in_process_full_step_s": med(in_process_full),
        "in_process_fit_wall_s": in_process_fit_s,
        "in_process_vs_plain_throughput": med(plain_full) / med(in_process_full),
        "spider_vs_full_step_time": med(plain_spider) / med(plain_full),
        "spider_capture_apply_s": med(spider_only),
        "trainable_bytes": trainable_bytes,
        "spider_state_bytes": state.extra_bytes(),
        "spider_state_vs_trainable": state.extra_bytes() / trainable_bytes,
        "largest_tensor_bytes": max(p.numel() * 4 for p in spider_loop.params),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
