"""Tables and plots of the skills-world experiments, written into docs/results.md.

Reads finished runs of ``jobs/experiments/*.yaml`` (each run folder holds ``run_config.json``,
``round_0/evaluate/scores.parquet`` and the arm runner's ``arms.parquet``: status, node and wall time of
every arm), groups their arms by what they vary (data choice, budget, seed,
retrieval mode, query, locator, weight update) and writes mean ± standard deviation over seeds::

    python jobs/experiments/summarize.py runs/experiments/selection runs/experiments/random_step

The generated part of ``docs/results.md`` sits between two marker lines and is replaced on every run;
text outside the markers is kept. Plots go to ``docs/results/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
GAP_SKILLS = ("attribute_binding", "vertical_position")


def arm_table(run_dir: Path) -> pd.DataFrame:
    """One row per evaluated model of a run: what the arm varies and its scores."""
    from edray.evaluate.core import summarize

    cfg = json.loads((run_dir / "run_config.json").read_text())
    scores = pd.read_parquet(run_dir / "round_0" / "evaluate" / "scores.parquet")
    summary = {s.model: s for s in summarize(scores.to_dict("records"), base="base")}
    select, train, diagnose = cfg.get("select", {}), cfg.get("train", {}), cfg.get("diagnose", {})
    locator = diagnose.get("locate", {}).get("method", "answer_switch")
    general = scores[(scores.suite == "general") & (scores.task == "*")]
    rows: list[dict[str, Any]] = []
    for arm in [{"name": "base", "strategy": "base"}] + cfg["arms"]:
        s = summary.get(arm["name"])
        if s is None:
            continue
        sel = {**select, **arm.get("select", {})}
        tr = {**train, **arm.get("train", {})}
        skill = general[general.model == arm["name"]].set_index("skill")["accuracy"]
        rows.append(
            {
                "run": run_dir.name,
                "model": arm["name"],
                "strategy": arm["strategy"],
                "budget": None if arm["strategy"] in ("base", "full") else sel.get("budget"),
                "seed": tr.get("seed", 0),
                "mode": arm.get("mode") or sel.get("mode", "hybrid"),
                "query": sel.get("query", "skill"),
                "locator": locator,
                "update_mode": arm.get("train_mode") or tr.get("mode", "lora"),
                "target": s.target_accuracy,
                "general": s.general_accuracy,
                "retention": s.retention,
                "combined": s.combined,
                **{f"skill:{k}": skill.get(k) for k in skill.index if k != "*"},
            }
        )
    table = pd.DataFrame(rows)
    # The shared columns of docs/results/arms.csv, one name per strategy (ablations named apart).
    pool_size = (cfg.get("world") or {}).get("pool", {}).get("pool_size")
    table.insert(0, "task", cfg.get("task"))
    table["strategy"] = [_strategy_name(r.strategy, r.query, r.locator) for r in table.itertuples()]
    table["budget_share"] = [b / pool_size if pool_size and b is not None and not pd.isna(b) else None for b in table["budget"]]
    table["update"] = table["update_mode"]
    table["target_accuracy"] = table["target"]
    table["n_test"] = [summary[m].target_n for m in table["model"]]
    arms_path = run_dir / "arms.parquet"
    if arms_path.is_file():
        arms = pd.read_parquet(arms_path, columns=["arm", "round", "status", "node_id", "wall_s"])
        arms = arms[arms["round"] == 0].drop(columns="round").rename(columns={"arm": "model"})
        table = table.merge(arms, on="model", how="left")
    return table


def _strategy_name(strategy: str, query: str, locator: str) -> str:
    """``none`` for the base student; error-driven ablations get their own names."""
    if strategy == "base":
        return "none"
    if strategy == "error_driven" and locator == "random":
        return "error_driven_random_step"
    if strategy == "error_driven" and query == "step":
        return "error_driven_raw_step"
    return strategy


def mean_sd(values: pd.Series) -> str:
    v = values.dropna().astype(float)
    if v.empty:
        return "–"
    if len(v) == 1:
        return f"{v.iloc[0]:.3f}"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


def grouped(df: pd.DataFrame, by: list[str], cols: list[str]) -> pd.DataFrame:
    out = df.groupby(by, dropna=False).agg(
        n=("seed", "count"), **{c: (c, mean_sd) for c in cols}
    ).reset_index()
    return out


def md_table(df: pd.DataFrame) -> str:
    names = {"update_mode": "update"}
    cols = [names.get(c, f"general: {c.removeprefix('skill:')}" if c.startswith("skill:") else c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join("–" if (isinstance(v, float) and math.isnan(v)) or v is None else str(v) for v in r) + " |")
    return "\n".join(lines)


def plot_budgets(df: pd.DataFrame, base: pd.Series, out: Path, main_update: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for strategy, marker in (("error_driven", "o"), ("random", "s"), ("insta", "^")):
        d = df[(df.strategy == strategy) & (df["mode"] == "hybrid") & (df["query"] == "skill") & (df.update_mode == main_update)]
        if d.empty:
            continue
        g = d.groupby("budget")
        for ax, col in zip(axes, ("target", "retention")):
            m, s = g[col].mean(), g[col].std(ddof=1).fillna(0)
            ax.errorbar(m.index, m.values, yerr=s.values, marker=marker, capsize=3, label=strategy.replace("_", "-"))
    full = df[df.strategy == "full"]
    for ax, col in zip(axes, ("target", "retention")):
        if not full.empty:
            ax.axhline(full[col].mean(), color="grey", linestyle="--", label="full pool")
        if col == "target":
            ax.axhline(base["target"], color="black", linestyle=":", label="base student")
        ax.set_xlabel("budget (samples)")
        ax.set_ylabel({"target": "target accuracy", "retention": "general retention"}[col])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Data choice at three budgets ({main_update} fine-tuning, mean ± sd over seeds)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_updates(df: pd.DataFrame, base: pd.Series, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.8))
    for update, marker in (("lora", "o"), ("full", "s"), ("spider", "D")):
        d = df[df.update_mode == update]
        if d.empty:
            continue
        ax.scatter(d["target"] - base["target"], d["retention"], marker=marker, label=update, alpha=0.8)
    ax.set_xlabel("target gain over the base student")
    ax.set_ylabel("general retention")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Weight update: gain vs retention (one point per seed)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def build(runs: list[Path], plots: Path, docs_rel: str) -> str:
    df = pd.concat([arm_table(r) for r in runs], ignore_index=True)
    base = df[df.strategy == "none"].iloc[0]
    tuned = df[df.strategy != "none"].copy()
    # the update most arms use (the run's train section); the others are the weight-update comparison
    main_update = str(tuned[tuned.strategy != "error_driven"].update_mode.mode().iloc[0])
    plots.mkdir(parents=True, exist_ok=True)
    cols = ["target", "retention", "combined"]
    parts = [f"Runs: {', '.join(f'`{r}`' for r in runs)}. Mean ± sample standard deviation over seeds.", ""]

    skill_cols = [c for c in df.columns if c.startswith("skill:")]
    base_skills = base[skill_cols].dropna().astype(float).sort_values(ascending=False)
    parts += [
        "### The base student",
        "",
        f"Target accuracy {base['target']:.3f}, general-suite accuracy {base['general']:.3f}. Per skill on the general suite"
        " (designed gaps marked):",
        "",
        md_table(
            pd.DataFrame(
                {
                    "skill": [c.removeprefix("skill:") + (" (gap)" if c.removeprefix("skill:") in GAP_SKILLS else "") for c in base_skills.index],
                    "accuracy": [f"{v:.3f}" for v in base_skills.values],
                }
            )
        ),
        "",
    ]

    main = tuned[(tuned["mode"] == "hybrid") & (tuned["query"] == "skill") & (tuned.update_mode == main_update) & (tuned.locator == "answer_switch")]
    budgets = main[main.strategy.isin(["error_driven", "random", "insta", "full"])]
    if not budgets.empty:
        table = grouped(budgets, ["budget", "strategy"], cols + ["skill:attribute_binding"])
        table["budget"] = table["budget"].map(lambda b: "whole pool" if b is None or (isinstance(b, float) and math.isnan(b)) else int(b))
        plot_budgets(tuned, base, plots / "budgets.png", main_update)
        parts += [
            f"### Data choice at three budgets ({main_update} fine-tuning)",
            "",
            md_table(table),
            "",
            f"![target accuracy and retention by budget]({docs_rel}/budgets.png)",
            "",
        ]

    mid = int(main[main.strategy == "error_driven"]["budget"].median()) if not main[main.strategy == "error_driven"].empty else None
    if mid is not None:
        ed = tuned[tuned.strategy.str.startswith("error_driven") & (tuned.budget == mid)]
        abl = ed[(ed["mode"] == "hybrid") & (ed.update_mode == main_update)].copy()
        abl["variant"] = abl.apply(
            lambda r: "random step" if r.locator == "random" else ("raw erroneous step as query" if r["query"] == "step" else "answer switch + skill (the method)"),
            axis=1,
        )
        if abl.variant.nunique() > 1:
            parts += [f"### Ablations (error-driven, budget {mid})", "", md_table(grouped(abl, ["variant"], cols + ["skill:attribute_binding"])), ""]
        ret = ed[(ed["query"] == "skill") & (ed.update_mode == main_update) & (ed.locator == "answer_switch")]
        if ret["mode"].nunique() > 1:
            parts += [f"### Retrieval (error-driven, budget {mid})", "", md_table(grouped(ret, ["mode"], cols)), ""]
        upd = ed[(ed["query"] == "skill") & (ed["mode"] == "hybrid") & (ed.locator == "answer_switch")]
        if upd.update_mode.nunique() > 1:
            plot_updates(upd, base, plots / "updates.png")
            parts += [
                f"### Weight update (error-driven, budget {mid})",
                "",
                md_table(grouped(upd, ["update_mode"], cols + ["general"])),
                "",
                f"![gain vs retention per update]({docs_rel}/updates.png)",
                "",
            ]
    df.drop(columns=skill_cols).to_csv(plots / "arms.csv", index=False)
    if "wall_s" in df.columns:
        arm_walls = df[df.strategy != "none"]["wall_s"].dropna()
        parts += [
            f"Arms ran as Ray Tune trials: {len(arm_walls)} arms, median {arm_walls.median():.1f} s per arm "
            f"(select + train + evaluate) on {df['node_id'].nunique()} node(s).",
            "",
        ] if not arm_walls.empty else []
    parts += [f"Every arm, one row each: [`{docs_rel}/arms.csv`]({docs_rel}/arms.csv).", ""]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders of jobs/experiments/*.yaml")
    parser.add_argument("--doc", type=Path, default=Path("docs/results.md"), help="markdown file to update")
    parser.add_argument("--plots", type=Path, default=Path("docs/results"), help="folder for plots and arms.csv")
    args = parser.parse_args()
    for r in args.runs:
        if not (r / "run_config.json").is_file() or not (r / "round_0" / "evaluate" / "_SUCCESS").is_file():
            parser.error(f"{r}: not a finished run (needs run_config.json and round_0/evaluate/_SUCCESS)")
    # links in the markdown are relative to the markdown file, wherever the plots folder is
    rel = os.path.relpath(args.plots.resolve(), args.doc.resolve().parent)
    body = build(args.runs, args.plots, rel)
    text = args.doc.read_text() if args.doc.exists() else f"# Results\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    args.doc.write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}")
    print(f"wrote {args.doc} and {args.plots}/")


if __name__ == "__main__":
    main()
