"""Wall time of the evaluate stage at the quickstart's size, in-process (``backend: transformers``).

The quickstart evaluates three models (the base student and two tuned arms, each a full model folder)
on 300 target test rows (``spot_item``) and 600 general-suite test rows, greedy, 96 new tokens at most,
64 prompts per batch. This script builds exactly those splits from the skills world, copies a student
folder into two arm folders, and times ``edray.evaluate.job.run`` on them (a fresh run directory each
time, so nothing is skipped).

    python bench/evaluate_speed.py --student students/w0 --out /tmp/evaluate-bench [--repeat 2] [--arms 0]

Prints one JSON line per repeat: total wall seconds, seconds per model, rows, failures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq

from edray.evaluate import job
from edray.evaluate.config import EvaluateConfig
from edray.world.pool import generate_eval_rows

# The quickstart's sizes (edray/pipeline/quickstart.yaml): eval.test_size 300, eval.general_size 600.
TARGET_TASK, TARGET_ROWS, GENERAL_ROWS = "spot_item", 300, 600


def build_inputs(student: Path, out: Path, arms: int = 2) -> EvaluateConfig:
    """Write the splits and the arm folders under ``out``; the evaluate config that reads them."""
    out.mkdir(parents=True, exist_ok=True)
    target, general = out / "target.parquet", out / "general.parquet"
    if not target.exists():
        pq.write_table(generate_eval_rows(TARGET_TASK, "test", TARGET_ROWS, seed=0), target)
    if not general.exists():
        pq.write_table(generate_eval_rows("general", "test", GENERAL_ROWS, seed=0), general)
    models = []
    for name in ("error_driven", "random")[:arms]:
        folder = out / "arms" / name
        if not folder.exists():
            shutil.copytree(student, folder)
        models.append({"name": name, "arm": name, "path": str(folder)})
    return EvaluateConfig.model_validate(
        {
            "target": [str(target)],
            "general": str(general),
            "base": {"name": "base", "path": str(student)},
            "models": models,
            # The quickstart's evaluate section.
            "generation": {"batch_size": 64, "max_tokens": 96, "family": "plain"},
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", type=Path, required=True, help="A world student folder (edray world pretrain).")
    parser.add_argument("--out", type=Path, required=True, help="Scratch folder for splits, arm copies and runs.")
    parser.add_argument("--repeat", type=int, default=1, help="Timed runs.")
    parser.add_argument("--arms", type=int, default=2, choices=(0, 1, 2), help="Tuned arms beside the base (quickstart: 2).")
    args = parser.parse_args()
    config = build_inputs(args.student, args.out, args.arms)
    for i in range(args.repeat):
        run_dir = args.out / f"run-{i}"
        shutil.rmtree(run_dir, ignore_errors=True)
        t0 = time.perf_counter()
        stage = job.run(config, run_dir, force=True)
        wall = time.perf_counter() - t0
        manifest = json.loads((stage / "manifest.json").read_text())
        print(
            json.dumps(
                {
                    "wall_s": round(wall, 1),
                    "seconds_per_model": manifest["metrics"]["seconds_per_model"],
                    "predictions": manifest["counts"]["predictions"],
                    "failures": manifest["counts"]["failures"],
                    "summary": {s["model"]: round(s["target_accuracy"], 3) for s in manifest["metrics"]["summary"]},
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
