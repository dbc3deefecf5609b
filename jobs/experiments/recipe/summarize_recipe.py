"""The table of jobs/experiments/recipe/: each weight update's gain on `corner` and what it costs the controls.

Reads the two finished runs (``runs/experiments/recipe/corner`` and ``.../same_colour_count``) with
``jobs/experiments/summarize.py``'s reader and prints one Markdown row per recipe (the arm name between the
strategy and the seed, e.g. ``full-lr3e-4``): accuracy in percent on 1,000 test rows, mean over seeds with
the bootstrap 95 % half-width over seed and item, and error-driven minus random with its paired interval.
A recipe keeps the controls when both of its arms on `same_colour_count` stay within 10 points of the base.

    python jobs/experiments/recipe/summarize_recipe.py runs/experiments/recipe/corner runs/experiments/recipe/same_colour_count
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from summarize import fmt_cell, fmt_diff, mean_ci, outcomes, read_runs  # noqa: E402

ARM = re.compile(r"^(ed|random)-(?P<recipe>.+)-s\d+$")
CONTROL_MARGIN = 0.10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="the recipe runs' folders")
    args = parser.parse_args()
    res = read_runs(args.runs)
    arms = res.arms[res.arms.status == "ok"].copy()
    arms["recipe"] = [m.group("recipe") if (m := ARM.match(a)) else "base" for a in arms.model]
    base = {t: arms[(arms.strategy == "none") & (arms.task == t)].target_accuracy.mean() for t in arms.task.unique()}

    def cell(recipe: str, strategy: str, task: str) -> dict:
        d = arms[(arms.recipe == recipe) & (arms.strategy == strategy) & (arms.task == task)]
        if strategy != "random":
            d = d[d.trained_for == task]
        return outcomes(d.drop_duplicates(subset=["seed"]), res.items)

    print("| recipe | `corner` random | `corner` error-driven | error-driven − random | "
          "`same_colour_count` random | error-driven | `big_one_shape` random | retention (random) | keeps the controls |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| none (base) | {100 * base.get('corner', float('nan')):.1f} | | | "
          f"{100 * base.get('same_colour_count', float('nan')):.1f} | | {100 * base.get('big_one_shape', float('nan')):.1f} | 1.000 | |")
    for recipe in dict.fromkeys(r for r in arms.recipe if r != "base"):
        ed, rnd = cell(recipe, "error_driven", "corner"), cell(recipe, "random", "corner")
        diff, _ = fmt_diff(ed, rnd)
        scc_r, scc_e = cell(recipe, "random", "same_colour_count"), cell(recipe, "error_driven", "same_colour_count")
        big_r = cell(recipe, "random", "big_one_shape")
        means = [mean_ci(v)[0] for v in (scc_r, scc_e) if v]
        keeps = bool(means) and all(base["same_colour_count"] - m <= CONTROL_MARGIN for m in means)
        ret = arms[(arms.recipe == recipe) & (arms.strategy == "random")].drop_duplicates("seed").retention.mean()
        print(f"| {recipe} | {fmt_cell(mean_ci(rnd))} | {fmt_cell(mean_ci(ed))} | {diff} | {fmt_cell(mean_ci(scc_r))} | "
              f"{fmt_cell(mean_ci(scc_e))} | {fmt_cell(mean_ci(big_r))} | {ret:.3f} | {'yes' if keeps else 'no'} |")


if __name__ == "__main__":
    main()
