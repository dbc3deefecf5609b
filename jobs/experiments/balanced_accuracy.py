"""Balanced accuracy of every arm on one target task: the mean over gold answers of the share answered right.

A task whose test answers are unbalanced rewards a model that always gives the majority answer
(`outnumber`'s 1,000 test rows are 621 "more", 307 "same", 72 "fewer", so "more" every time scores 62.1 %).
Balanced accuracy scores that model at 1 / (number of answers), and a model that gets every answer right at
1.0, so it separates learning the comparison from settling on one answer. This script reads the collected
evaluation predictions of finished ``edray run`` folders (``round_0/evaluate/predictions.parquet``: the base
model and every arm) and prints, per arm group (arm name without its ``-s<seed>`` suffix, per run folder), the
mean, min and max of balanced and plain accuracy over seeds, and the share of predictions that are the majority
answer.

    python jobs/experiments/balanced_accuracy.py outnumber runs/experiments/headline_v2/*/ runs/experiments/ablations_v2/*/

One JSON line per arm group on stdout, sorted by run and arm.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq

PREDICTIONS = Path("round_0") / "evaluate" / "predictions.parquet"  # every model of the run, collected
SEED_SUFFIX = re.compile(r"-s\d+$")


def balanced_accuracy(gold: list[str], correct: list[bool]) -> float:
    """Mean over the gold answers present of the share of their rows answered right."""
    right: dict[str, list[bool]] = defaultdict(list)
    for g, c in zip(gold, correct, strict=True):
        right[g].append(c)
    return sum(sum(v) / len(v) for v in right.values()) / len(right)


def model_scores(run_dirs: list[Path], task: str) -> list[dict]:
    """One dict per (run, model) evaluated on ``task``'s target rows: balanced and plain accuracy."""
    rows = []
    for run_dir in run_dirs:
        by_model: dict[str, list[dict]] = defaultdict(list)
        for r in pq.read_table(run_dir / PREDICTIONS, columns=["model", "suite", "task", "prediction", "gold", "correct"]).to_pylist():
            if r["suite"] == "target" and r["task"] == task:
                by_model[r["model"]].append(r)
        for model, preds in sorted(by_model.items()):
            gold = [p["gold"] for p in preds]
            correct = [bool(p["correct"]) for p in preds]
            majority = Counter(gold).most_common(1)[0][0]
            rows.append({
                "run": run_dir.name, "model": model, "n": len(preds),
                "balanced": balanced_accuracy(gold, correct), "accuracy": sum(correct) / len(correct),
                "majority_answer": majority, "majority_share": sum(p["prediction"] == majority for p in preds) / len(preds),
            })  # fmt: skip
    return rows


def group(rows: list[dict]) -> list[dict]:
    """Arm groups (run, arm name without the seed suffix): mean / min / max over seeds."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["run"], SEED_SUFFIX.sub("", r["model"]))].append(r)
    out = []
    for (run, arm), members in sorted(groups.items()):
        entry: dict = {"run": run, "arm": arm, "seeds": len(members), "n": members[0]["n"], "majority_answer": members[0]["majority_answer"]}
        for key in ("balanced", "accuracy", "majority_share"):
            values = [m[key] for m in members]
            entry[key] = {"mean": round(sum(values) / len(values), 4), "min": round(min(values), 4), "max": round(max(values), 4)}
        out.append(entry)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", help="target task, e.g. outnumber")
    parser.add_argument("runs", nargs="+", type=Path, help="edray run folders")
    args = parser.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / PREDICTIONS).is_file()]
    if missing:
        parser.error(f"not a finished run folder (no {PREDICTIONS}): {', '.join(missing)}")
    rows = model_scores(args.runs, args.task)
    if not rows:
        parser.error(f"no predictions for target task {args.task!r} in {len(args.runs)} run folder(s)")
    for entry in group(rows):
        print(json.dumps(entry))


if __name__ == "__main__":
    main()
