"""Benchmark of the arm runner: N small arms as Ray Tune trials against the same N trainings in a plain loop.

Usage::

    python bench/arms.py [--arms 8] [--rows 64] [--steps 16] [--batch-size 8] [--cluster local|two-node]
                         [--out bench/arms.json]

Each arm fine-tunes the same tiny student (``StudentConfig(seed=0)``, random weights) with LoRA on its
own selection of ``--rows`` pool rows for ``--steps`` optimizer steps, one CPU worker, one torch thread.

1. *Plain loop*: the N trainings one after another in this process with transformers, peft and torch
   only (the student loaded once, a fresh copy per arm, same collate and loss as edray, the adapter
   saved at the end). This is the work without any runner.
2. *Runner, one at a time*: the same N arms through :func:`edray.pipeline.arms.run_arms` with one trial
   at a time: Tune trials, the train stage's contract (fingerprint, checks, quarantine, checkpoint,
   export, manifest), the arm records and ``arms.parquet``. Per-arm overhead = (runner − plain) / N.
3. *Runner, concurrent*: the same arms as many at a time as the cluster holds (one CPU each).
   Speed-up = plain / concurrent wall time.

``--cluster two-node`` runs 2 and 3 on a local two-node Ray cluster (``ray.cluster_utils.Cluster``,
one CPU per node) and reports on which nodes the trials ran. Ray's own start-up is left out of every
wall time (the plain loop needs none). Timings are taken in one run: absolute numbers depend on load.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def _setup(root: Path, arms: int, rows: int) -> tuple[Path, Path, list[Path]]:
    import numpy as np

    from edray.world.pool import generate_support_rows
    from edray.world.skills import corpus_texts
    from edray.world.student import StudentConfig, build_student

    student = build_student(root / "student", StudentConfig(seed=0), corpus_texts(400, seed=0))
    pool = generate_support_rows(11, 0, max(4 * rows, 256))
    pq.write_table(pool, root / "pool.parquet")
    ids = pool["id"].to_pylist()
    selections = []
    for i in range(arms):
        pick = np.random.default_rng(i).choice(len(ids), rows, replace=False)
        path = root / f"selection_{i}.parquet"
        pq.write_table(pa.table({"id": [ids[j] for j in pick]}), path)
        selections.append(path)
    return student, root / "pool.parquet", selections


def _train_config(args: argparse.Namespace) -> Any:
    from edray.train.config import TrainConfig

    return TrainConfig(
        mode="lora", batch_size=args.batch_size, max_steps=args.steps, torch_threads=1, num_workers=1,
        checkpoint_every=10_000, log_every=10_000, optim={"lr": 1e-3, "warmup_steps": 2},
    )  # fmt: skip


def plain_loop(cfg: Any, student: Path, pool: Path, selections: list[Path], out: Path) -> float:
    """The N trainings with transformers + peft + torch in this process; returns the wall time."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from edray.train.core import answer_loss, collate_rows

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    processor = AutoProcessor.from_pretrained(student)
    base = AutoModelForImageTextToText.from_pretrained(student, dtype=torch.float32)
    table = pq.read_table(pool, columns=["id", "images", "messages"])
    by_id = {r["id"]: r for r in table.to_pylist()}
    for i, sel in enumerate(selections):
        rows = [by_id[x] for x in pq.read_table(sel)["id"].to_pylist()]
        torch.manual_seed(cfg.seed)
        lcfg = LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=cfg.lora.targets, bias="none")  # fmt: skip
        model = get_peft_model(copy.deepcopy(base), lcfg)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.optim.lr)
        b = cfg.batch_size
        for step in range(cfg.max_steps):
            batch = collate_rows(processor, rows[(step * b) % len(rows) :][:b], cfg.max_length)
            labels = batch.pop("labels")
            loss_sum, n = answer_loss(model(**batch).logits, labels)
            (loss_sum / n.clamp(min=1)).backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
        model.save_pretrained(out / f"plain_{i}")
    return time.perf_counter() - t0


def runner(cfg: Any, student: Path, pool: Path, selections: list[Path], run_dir: Path, concurrency: int | None) -> tuple[float, list[dict[str, Any]]]:
    """The N arms through the arm runner; returns the wall time and the arms' records."""
    from edray.pipeline.arms import ArmWork, run_arms, trial_resources, write_arms_table

    works = [
        ArmWork(name=f"arm{i}", round=0, root=str(run_dir / "arms" / f"arm{i}"), student=str(student), pool=str(pool),
                evaluate=None, strategy="random", selection=str(sel), train=cfg.model_dump(mode="json"),
                resources=trial_resources(cfg))  # fmt: skip
        for i, sel in enumerate(selections)
    ]
    t0 = time.perf_counter()
    records = run_arms(works, run_dir, 0, concurrency=concurrency)
    write_arms_table(run_dir, records)
    return time.perf_counter() - t0, records


def _start_ray(kind: str) -> Any:
    import ray

    if kind == "local":
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        return None
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    return cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", type=int, default=8, help="number of arms (default 8)")
    parser.add_argument("--rows", type=int, default=64, help="rows in each arm's selection (default 64)")
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps per arm (default 16)")
    parser.add_argument("--batch-size", type=int, default=8, help="micro-batch size (default 8)")
    parser.add_argument("--cluster", choices=("local", "two-node"), default="local", help="Ray cluster for the runner")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args()

    import ray

    cfg = _train_config(args)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        student, pool, selections = _setup(root, args.arms, args.rows)
        plain_s = plain_loop(cfg, student, pool, selections, root)
        cluster = _start_ray(args.cluster)
        try:
            serial_s, serial = runner(cfg, student, pool, selections, root / "serial", concurrency=1)
            conc_s, conc = runner(cfg, student, pool, selections, root / "concurrent", concurrency=None)
        finally:
            ray.shutdown()
            if cluster is not None:
                cluster.shutdown()

    failed = [r for r in serial + conc if r.get("status") != "ok"]
    if failed:
        raise SystemExit(f"{len(failed)} arms failed: {[(r['arm'], r.get('error')) for r in failed]}")
    n = args.arms
    nodes = sorted({r["node_id"] for r in conc})
    # arms of different nodes whose trials overlapped in time
    overlapping = sum(
        1
        for a in conc
        for b in conc
        if a["arm"] < b["arm"] and a["node_id"] != b["node_id"]
        and a["started_at"] < b["started_at"] + b["wall_s"] and b["started_at"] < a["started_at"] + a["wall_s"]
    )
    result = {
        "arms": n,
        "rows": args.rows,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "cluster": args.cluster,
        "plain_s": round(plain_s, 2),
        "runner_serial_s": round(serial_s, 2),
        "runner_concurrent_s": round(conc_s, 2),
        "overhead_per_arm_s": round((serial_s - plain_s) / n, 2),
        "speedup_concurrent_vs_plain": round(plain_s / conc_s, 2),
        "speedup_concurrent_vs_serial": round(serial_s / conc_s, 2),
        "median_train_s": round(statistics.median(r["train_s"] for r in serial), 2),
        "runners": sorted({r["runner"] for r in serial}),
        "nodes_used": len(nodes),
        "arms_per_node": {nid[:8]: sum(r["node_id"] == nid for r in conc) for nid in nodes},
        "cross_node_overlapping_pairs": overlapping,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
