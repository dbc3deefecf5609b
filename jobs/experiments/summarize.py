"""The results tables of the skills-world grid, in the paper's layout, written into docs/results.md.

Reads finished ``edray run`` folders of the grid (``jobs/experiments/headline_v2/``, ``ablations_v2/`` and
``grid_v2/``; each run folder holds ``run_config.json``,
``round_0/evaluate/scores.parquet`` and ``predictions.parquet`` (one scored answer per model, task and test
row), the arm runner's ``arms.parquet`` and the world checks in ``checks/checks.json``) and writes:

- ``docs/results/arms.csv``: one row per (arm, task evaluated): ``task, strategy, budget_share, seed,
  update, target_accuracy, retention, n_test`` and what each arm varies (retrieval mode, query, locator,
  teacher, the task it was selected for, wall time);
- the generated block of ``docs/results.md``: (i) the main table, tasks plus macro averages (gap tasks,
  controls) by strategy and budget, mean ± 95 % CI, and the accuracy of always giving the task's most
  common answer; (ii) the headline, error-driven minus random over the
  gap tasks at the 5 % budget with a paired bootstrap 95 % CI over seed and item, and the controls' difference,
  then the same difference at every budget;
  (iii) error-driven at <= 10 % of the pool against the full pool, per task; (iv) retention; (v) the
  ablations; (vi) selection precision@budget and the world checks of every run.

Run it with::

    python jobs/experiments/summarize.py runs/experiments/headline_v2/*/ runs/experiments/ablations_v2/*/ runs/experiments/grid_v2/*/ --out docs/results

The generated part of ``docs/results.md`` sits between two marker lines and is replaced on every run;
text outside the markers is kept.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from edray.evaluate.stats import paired_bootstrap

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
GAP_TASKS = ("corner", "colour_corner", "locate_item", "spot_item", "outnumber")
CONTROL_TASKS = ("same_colour_count", "big_one_shape")
STRATEGIES = ("none", "random", "insta", "error_driven", "oracle", "full")
# Strategies whose training does not depend on the target task: one training is compared on every task.
TASK_FREE = ("none", "random", "full", "oracle")
HEADLINE_BUDGET = 0.05
ABLATION_BUDGET = 0.02
RESAMPLES = 2000
CELL_RESAMPLES = 1000

# two-sided 95 % quantiles of Student's t by degrees of freedom (1..10); 1.96 beyond
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


# --- reading runs ----------------------------------------------------------------------------------------


@dataclass
class Results:
    """Every arm of the runs: ``arms`` one row per (arm, task evaluated); ``items`` one row per
    (run, arm, task, test row) with its correctness; ``checks`` one row per (run, check)."""

    arms: pd.DataFrame
    items: pd.DataFrame
    checks: pd.DataFrame


def strategy_name(strategy: str, query: str | None, locator: str | None, noisy_teacher: bool) -> str:
    """The strategy column: ``none`` for the base student; each error-driven ablation its own name."""
    if strategy == "base":
        return "none"
    if strategy != "error_driven":
        return strategy
    if locator == "random":
        return "error_driven_random_step"
    if query == "step":
        return "error_driven_raw_step"
    if noisy_teacher:
        return "error_driven_noisy_teacher"
    return strategy


def _pool_rows(run_dir: Path, cfg: dict[str, Any]) -> int | None:
    world = Path(cfg.get("world_dir") or run_dir / "world") / "pool"
    files = sorted(world.rglob("*.parquet")) if world.is_dir() else []
    if files:
        import pyarrow.parquet as pq

        return sum(pq.read_metadata(f).num_rows for f in files)
    return ((cfg.get("world") or {}).get("pool") or {}).get("pool_size")


def read_run(run_dir: Path) -> Results:
    """One finished run of the grid as :class:`Results`."""
    from edray.evaluate.core import summarize

    cfg = json.loads((run_dir / "run_config.json").read_text())
    evaluate = run_dir / "round_0" / "evaluate"
    scores = pd.read_parquet(evaluate / "scores.parquet")
    preds = pd.read_parquet(evaluate / "predictions.parquet", columns=["model", "suite", "task", "id", "gold", "correct"])
    summary = {s.model: s for s in summarize(scores.to_dict("records"), base="base", task=cfg.get("task"))}
    select, train, diagnose = cfg.get("select", {}), cfg.get("train", {}), cfg.get("diagnose", {})
    locator = (diagnose.get("locate") or {}).get("method", "answer_switch")
    noise = ((cfg.get("world") or {}).get("teacher") or {}).get("noise") or {}
    noisy = any(float(noise.get(k, 0.0)) > 0 for k in ("wrong_step", "wrong_skill")) and not (cfg.get("serve") or {}).get("teacher_base_url")
    pool_rows = _pool_rows(run_dir, cfg)
    target = scores[(scores.suite == "target") & (scores.skill == "*") & (scores.task != "*")]
    walls = {}
    if (run_dir / "arms.parquet").is_file():
        a = pd.read_parquet(run_dir / "arms.parquet")
        walls = {r["arm"]: r for r in a[a["round"] == 0].to_dict("records")}
    rows: list[dict[str, Any]] = []
    for arm in [{"name": "base", "strategy": "base"}] + cfg["arms"]:
        s = summary.get(arm["name"])
        if s is None:
            continue
        sel = {**select, **arm.get("select", {})}
        tr = {**train, **arm.get("train", {})}
        query = sel.get("query", "skill")
        strategy = strategy_name(arm["strategy"], query, locator, noisy)
        budget = None if strategy in ("none", "full") else sel.get("budget")
        share = 0.0 if strategy == "none" else 1.0 if strategy == "full" else (budget / pool_rows if budget and pool_rows else None)
        base_fields = {
            "run": run_dir.name,
            "model": arm["name"],
            "trained_for": cfg.get("task"),
            "strategy": strategy,
            "budget": budget,
            "budget_share": round(share, 4) if share is not None else None,
            "seed": int(tr.get("seed", sel.get("seed", 0)) or 0) if strategy != "none" else 0,
            "update": "none" if strategy == "none" else arm.get("train_mode") or tr.get("mode", "lora"),
            "mode": arm.get("mode") or sel.get("mode", "hybrid"),
            "query": query,
            "locator": locator,
            "teacher": "noisy" if noisy else "exact",
            "general_accuracy": s.general_accuracy,
            "retention": s.retention,
            "status": walls.get(arm["name"], {}).get("status", "ok"),
            "wall_s": walls.get(arm["name"], {}).get("wall_s"),
            "train_steps": walls.get(arm["name"], {}).get("train_steps"),
        }
        for t in target[target.model == arm["name"]].itertuples():
            rows.append({"task": t.task, **base_fields, "target_accuracy": t.accuracy, "n_test": int(t.n)})
    items = preds[preds.suite == "target"].drop(columns="suite")
    items.insert(0, "run", run_dir.name)
    return Results(pd.DataFrame(rows), items, read_checks(run_dir))


def read_checks(run_dir: Path) -> pd.DataFrame:
    """The world checks a run wrote (``checks/checks.json``), one row per check; empty when none."""
    path = run_dir / "checks" / "checks.json"
    if not path.is_file():
        return pd.DataFrame(columns=["run", "check", "name", "status", "explanation", "measured"])
    return pd.DataFrame(
        [{"run": run_dir.name, "check": c["check"], "name": c["name"], "status": c["status"],
          "explanation": c["explanation"], "measured": c.get("measured") or {}} for c in json.loads(path.read_text())]
    )  # fmt: skip


def read_runs(runs: Iterable[Path]) -> Results:
    """Every run's :class:`Results`, concatenated."""
    parts = [read_run(Path(r)) for r in runs]
    checks = [p.checks for p in parts if not p.checks.empty]
    return Results(
        pd.concat([p.arms for p in parts], ignore_index=True),
        pd.concat([p.items for p in parts], ignore_index=True),
        pd.concat(checks, ignore_index=True) if checks else parts[0].checks,
    )


# --- selecting arms and their outcomes -------------------------------------------------------------------


def main_setting(arms: pd.DataFrame) -> tuple[str, str]:
    """The (update, retrieval mode) most error-driven arms use: the main comparison's setting; the others are
    the update-mode and retrieval comparisons."""
    ed = arms[arms.strategy == "error_driven"]
    pool = ed if not ed.empty else arms[arms.strategy != "none"]
    update = str(pool["update"].mode().iloc[0]) if not pool.empty else "full"
    mode = str(ed["mode"].mode().iloc[0]) if not ed.empty else "hybrid"
    return update, mode


def cell_arms(arms: pd.DataFrame, task: str, strategy: str, budget: float | None, update: str | None = None,
              mode: str | None = None) -> pd.DataFrame:  # fmt: skip
    """The arms of one cell: evaluated on ``task``, of ``strategy`` at ``budget`` (share of the pool). A
    task-dependent strategy counts only arms selected for that task; a task-free one is deduplicated by seed
    (the base student, evaluated by every run, counts once)."""
    d = arms[(arms.task == task) & (arms.strategy == strategy) & (arms.status == "ok")]
    if budget is not None and strategy not in ("none", "full"):
        d = d[(d.budget_share - budget).abs() < 1e-6]
    if strategy not in TASK_FREE:
        d = d[d.trained_for == task]
    if update is not None and strategy != "none":
        d = d[d["update"] == update]
    if mode is not None and strategy.startswith("error_driven"):
        d = d[d["mode"] == mode]
    return d.drop_duplicates(subset=["seed"], keep="first")


def outcomes(cells: pd.DataFrame, items: pd.DataFrame) -> dict[tuple[int, str], float]:
    """``(seed, task/id) -> correct`` of the arms in ``cells`` (one arm per seed and task)."""
    if cells.empty:
        return {}
    keys = cells[["run", "model", "task", "seed"]]
    merged = items.merge(keys, on=["run", "model", "task"])
    return {(int(s), f"{t}/{i}"): float(c) for s, t, i, c in zip(merged.seed, merged.task, merged.id, merged.correct)}


def mean_ci(values: dict[tuple[int, str], float], resamples: int = CELL_RESAMPLES) -> tuple[float, float, float, int] | None:
    """Mean accuracy with its bootstrap 95 % interval over seed and item: ``(mean, low, high, seeds)``."""
    if not values:
        return None
    d = paired_bootstrap(values, {k: 0.0 for k in values}, resamples=resamples)
    return d.mean, d.low, d.high, d.n_seeds


def macro(arms: pd.DataFrame, items: pd.DataFrame, tasks: Sequence[str], strategy: str, budget: float | None,
          update: str | None, mode: str | None) -> dict[tuple[int, str], float]:  # fmt: skip
    """Outcomes of ``strategy`` over several tasks, keyed by seed and task/item: their mean is the macro
    average when the tasks have equally many test rows (the grid's 1,000 each). Empty unless every task has
    the cell."""
    out: dict[tuple[int, str], float] = {}
    for task in tasks:
        part = outcomes(cell_arms(arms, task, strategy, budget, update, mode), items)
        if not part:
            return {}
        out.update(part)
    return out


def majority_share(items: pd.DataFrame, tasks: Sequence[str]) -> float | None:
    """The accuracy of always giving each task's most common test answer, averaged over ``tasks``: the floor a
    model reaches by settling on one answer (``None`` without gold answers)."""
    if "gold" not in items.columns:
        return None
    rows = items[items.task.isin(tasks)].drop_duplicates(subset=["task", "id"])
    shares = [g.gold.value_counts(normalize=True).iloc[0] for _, g in rows.groupby("task")]
    return sum(shares) / len(shares) if shares and len(shares) == len(set(tasks)) else None


def fmt_cell(stat: tuple[float, float, float, int] | None) -> str:
    if stat is None:
        return "–"
    mean, low, high, _ = stat
    return f"{100 * mean:.1f} ± {100 * (high - low) / 2:.1f}"


def fmt_diff(a: dict, b: dict, resamples: int = RESAMPLES) -> tuple[str, Any]:
    """``+x.x [lo, hi]`` points of mean(A - B), paired over seed and item; ``–`` when nothing pairs."""
    if not a or not b or not set(a) & set(b):
        return "–", None
    d = paired_bootstrap(a, b, resamples=resamples)
    return f"{100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]", d


def _budget_label(share: float) -> str:
    return f"{100 * share:g} %"


def _md(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("–" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _tasks(arms: pd.DataFrame, gap_tasks: Sequence[str], controls: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    present = set(arms.task)
    gaps = [t for t in gap_tasks if t in present]
    ctrl = [t for t in controls if t in present]
    other = sorted(present - set(gaps) - set(ctrl))
    return gaps, ctrl, other


# --- the tables ------------------------------------------------------------------------------------------


def main_table(res: Results, gap_tasks: Sequence[str], controls: Sequence[str]) -> str:
    """(i) Rows: tasks, then the macro averages; columns: each strategy at each budget; mean ± 95 % CI (points);
    last, the accuracy of always giving the task's most common answer, when the items carry gold answers."""
    arms, items = res.arms, res.items
    update, mode = main_setting(arms)
    budgets = sorted({b for b in arms[arms.strategy.isin(["random", "insta", "error_driven", "oracle"])].budget_share.dropna()})
    columns: list[tuple[str, float | None]] = [("none", None)]
    columns += [(s, b) for b in budgets for s in ("random", "insta", "error_driven")]
    columns += [("full", None)] + [("oracle", b) for b in budgets]
    gaps, ctrl, other = _tasks(arms, gap_tasks, controls)
    rows_spec: list[tuple[str, list[str]]] = [(t, [t]) for t in gaps + ctrl + other]
    if len(gaps) > 1:
        rows_spec.append((f"macro: gap tasks ({len(gaps)})", gaps))
    if len(ctrl) > 1:
        rows_spec.append((f"macro: controls ({len(ctrl)})", ctrl))
    table: dict[str, list[str]] = {}
    for label, tasks in rows_spec:
        table[label] = [fmt_cell(mean_ci(macro(arms, items, tasks, s, b, update if s != "none" else None, mode))) for s, b in columns]
    keep = [j for j in range(len(columns)) if any(table[label][j] != "–" for label in table)]
    header = ["task"] + [(f"{s} {_budget_label(b)}" if b is not None else s) for j, (s, b) in enumerate(columns) if j in keep]
    body = [[label] + [cells[j] for j in keep] for label, cells in table.items()]
    floors = [majority_share(items, tasks) for _, tasks in rows_spec]
    if any(f is not None for f in floors):
        header.append("one answer")
        for row, floor in zip(body, floors):
            row.append(f"{100 * floor:.1f}" if floor is not None else "–")
    return _md(header, body)


def headline(res: Results, gap_tasks: Sequence[str], controls: Sequence[str], budget: float = HEADLINE_BUDGET) -> dict[str, Any]:
    """(ii) Error-driven minus random at ``budget``: macro over the gap tasks and over the controls, each
    with its paired bootstrap 95 % CI over seed and item, and per task."""
    arms, items = res.arms, res.items
    update, mode = main_setting(arms)
    gaps, ctrl, _ = _tasks(arms, gap_tasks, controls)
    out: dict[str, Any] = {"budget": budget, "update": update, "mode": mode}
    for name, tasks in (("gap", gaps), ("controls", ctrl)):
        a = macro(arms, items, tasks, "error_driven", budget, update, mode)
        b = macro(arms, items, tasks, "random", budget, update, mode)
        out[name] = paired_bootstrap(a, b, resamples=RESAMPLES) if a and b and set(a) & set(b) else None
        out[f"{name}_tasks"] = tasks
    out["per_task"] = {}
    for task in gaps + ctrl:
        a = outcomes(cell_arms(arms, task, "error_driven", budget, update, mode), items)
        b = outcomes(cell_arms(arms, task, "random", budget, update, mode), items)
        out["per_task"][task] = fmt_diff(a, b)[0]
    return out


def headline_text(h: dict[str, Any]) -> str:
    lines = [f"Error-driven minus random at the {_budget_label(h['budget'])} budget ({h['update']} update, {h['mode']} "
             "retrieval), paired bootstrap 95 % CI over seed and item, in points:", ""]  # fmt: skip
    for name, label in (("gap", "gap tasks"), ("controls", "controls")):
        d = h.get(name)
        if d is None:
            lines.append(f"- macro over the {label}: not measured (no paired error-driven and random arms)")
        else:
            lines.append(f"- **macro over the {label} ({len(h[name + '_tasks'])}): {100 * d.mean:+.1f} points, 95 % CI "
                         f"[{100 * d.low:+.1f}, {100 * d.high:+.1f}]** ({d.n_seeds} seeds, {d.n:,} paired answers)")  # fmt: skip
    if h["per_task"]:
        lines += ["", _md(["task", "error-driven − random"], sorted(h["per_task"].items()))]
    return "\n".join(lines)


def budget_table(res: Results, gap_tasks: Sequence[str], controls: Sequence[str]) -> str:
    """Error-driven minus random at every budget both were run at, in the main setting: the gap tasks' and the
    controls' macro accuracy of each, and the paired difference with its bootstrap 95 % CI over seed and item."""
    arms, items = res.arms, res.items
    update, mode = main_setting(arms)
    gaps, ctrl, _ = _tasks(arms, gap_tasks, controls)
    shares = set(arms[arms.strategy == "error_driven"].budget_share.dropna()) & set(arms[arms.strategy == "random"].budget_share.dropna())
    rows = []
    for share in sorted(shares):
        row: list[Any] = [_budget_label(share)]
        for tasks in (gaps, ctrl):
            ed = macro(arms, items, tasks, "error_driven", share, update, mode) if tasks else {}
            rand = macro(arms, items, tasks, "random", share, update, mode) if tasks else {}
            row += [fmt_cell(mean_ci(ed)), fmt_cell(mean_ci(rand)), fmt_diff(ed, rand)[0]]
        rows.append(row)
    header = ["budget", f"gap tasks ({len(gaps)}): error-driven", "random", "difference [CI]",
              f"controls ({len(ctrl)}): error-driven", "random", "difference [CI]"]  # fmt: skip
    return _md(header, rows) if rows else ""


def versus_full(res: Results, gap_tasks: Sequence[str], controls: Sequence[str], max_share: float = 0.10) -> str:
    """(iii) Error-driven at each budget <= ``max_share`` of the pool against the full pool, per task."""
    arms, items = res.arms, res.items
    update, mode = main_setting(arms)
    budgets = sorted(b for b in arms[arms.strategy == "error_driven"].budget_share.dropna().unique() if b <= max_share + 1e-9)
    gaps, ctrl, other = _tasks(arms, gap_tasks, controls)
    rows = []
    for task in gaps + ctrl + other:
        full = outcomes(cell_arms(arms, task, "full", None, update), items)
        row = [task, fmt_cell(mean_ci(full))]
        for b in budgets:
            ed = outcomes(cell_arms(arms, task, "error_driven", b, update, mode), items)
            row += [fmt_cell(mean_ci(ed)), fmt_diff(ed, full)[0]]
        rows.append(row)
    header = ["task", "full pool"] + [h for b in budgets for h in (f"error-driven {_budget_label(b)}", "− full [CI]")]
    return _md(header, rows)


def versus_insta(res: Results, gap_tasks: Sequence[str], controls: Sequence[str]) -> str:
    """Error-driven minus INSTA-style selection at every budget both were run at: per task and macro over the gap
    tasks and the controls, paired bootstrap 95 % CI over seed and item ("" when no budget has both)."""
    arms, items = res.arms, res.items
    update, mode = main_setting(arms)

    def shares(strategy: str) -> set[float]:
        return set(arms[arms.strategy == strategy].budget_share.dropna().unique())

    budgets = sorted(shares("error_driven") & shares("insta"))
    if not budgets:
        return ""
    gaps, ctrl, other = _tasks(arms, gap_tasks, controls)
    rows = []
    for task in gaps + ctrl + other:
        row = [task]
        for b in budgets:
            ed = outcomes(cell_arms(arms, task, "error_driven", b, update, mode), items)
            insta = outcomes(cell_arms(arms, task, "insta", b, update, mode), items)
            row.append(fmt_diff(ed, insta)[0])
        rows.append(row)
    for label, tasks in ((f"macro: gap tasks ({len(gaps)})", gaps), (f"macro: controls ({len(ctrl)})", ctrl)):
        if tasks:
            row = [label]
            for b in budgets:
                ed = macro(arms, items, tasks, "error_driven", b, update, mode)
                insta = macro(arms, items, tasks, "insta", b, update, mode)
                row.append(fmt_diff(ed, insta)[0] if ed and insta else "–")
            rows.append(row)
    return _md(["task"] + [f"error-driven − INSTA-style {_budget_label(b)} [CI]" for b in budgets], rows)


def t_interval(values: Sequence[float]) -> str:
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return "–"
    m = sum(v) / len(v)
    if len(v) == 1:
        return f"{m:.3f}"
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
    t = _T95[len(v) - 2] if len(v) - 1 <= len(_T95) else 1.96
    return f"{m:.3f} ± {t * sd / math.sqrt(len(v)):.3f}"


def retention_table(res: Results) -> str:
    """(iv) General-suite retention per strategy, budget and update (one value per trained arm; mean ± t 95 % CI
    over seeds), with the arms' target accuracy on the task they were selected for."""
    _, mode = main_setting(res.arms)
    arms = res.arms[(res.arms.status == "ok") & (res.arms.strategy != "none")]
    # other retrieval modes are compared in the ablation table
    arms = arms[~arms.strategy.str.startswith("error_driven") | (arms["mode"] == mode)]
    own = arms[(arms.task == arms.trained_for) | arms.strategy.isin(TASK_FREE)].drop_duplicates(subset=["run", "model"])
    rows = []
    for (strategy, update, share), g in own.groupby(["strategy", "update", "budget_share"], dropna=False):
        rows.append([strategy, update, share, len(g), t_interval(g.retention), t_interval(g.general_accuracy)])
    order = {s: i for i, s in enumerate(STRATEGIES)}
    rows.sort(key=lambda r: (order.get(r[0], 99), r[0], r[1], r[2] if r[2] == r[2] else -1))
    for r in rows:
        r[2] = _budget_label(r[2]) if r[2] == r[2] else "–"
    return _md(["strategy", "update", "budget", "arms", "retention", "general accuracy"], rows)


def ablation_table(res: Results, gap_tasks: Sequence[str], budget: float = ABLATION_BUDGET) -> str:
    """(v) The paper's ablations at ``budget``, macro over the gap tasks: the method against a random step
    instead of the answer switch, the raw erroneous step instead of the skill as query, no targeted retrieval
    (random), no tuning, a noisy teacher, and the retrieval modes; each with its paired difference to the method."""
    arms, items = res.arms, res.items
    update, mode = main_setting(arms)
    gaps, _, _ = _tasks(arms, gap_tasks, ())
    method = macro(arms, items, gaps, "error_driven", budget, update, mode)
    variants: list[tuple[str, dict]] = [("error-driven (answer switch + skill, the method)", method)]
    variants.append(("random step instead of the answer switch", macro(arms, items, gaps, "error_driven_random_step", budget, update, mode)))
    variants.append(("raw erroneous step as query instead of the skill", macro(arms, items, gaps, "error_driven_raw_step", budget, update, mode)))
    variants.append(("no targeted retrieval (random)", macro(arms, items, gaps, "random", budget, update, mode)))
    variants.append(("no tuning", macro(arms, items, gaps, "none", None, None, None)))
    variants.append(("noisy teacher (20 % wrong step, 20 % wrong skill)", macro(arms, items, gaps, "error_driven_noisy_teacher", budget, update, mode)))
    for m in sorted(set(arms[arms.strategy == "error_driven"]["mode"]) - {mode}):
        variants.append((f"retrieval {m} instead of {mode}", macro(arms, items, gaps, "error_driven", budget, update, m)))
    rows = []
    for label, values in variants:
        if not values:
            continue
        diff = "–" if values is method else fmt_diff(values, method)[0]
        rows.append([label, fmt_cell(mean_ci(values)), diff])
    return _md(["variant", f"gap tasks, macro accuracy ({_budget_label(budget)})", "− method [CI]"], rows)


def update_table(res: Results, gap_tasks: Sequence[str]) -> str:
    """Weight update (full / LoRA / SPIDER) of the error-driven arms in the main retrieval mode, per budget:
    target accuracy macro over the gap tasks (mean ± bootstrap CI), its paired difference to the main update,
    and retention (mean ± t 95 % CI over the arms, each on its own task); then the random arms of the same
    update and budget, the error-driven gain over them and their retention ("–" where none was trained)."""
    arms, items = res.arms, res.items
    main_update, mode = main_setting(arms)
    gaps, _, _ = _tasks(arms, gap_tasks, ())
    ed = arms[(arms.strategy == "error_driven") & (arms["mode"] == mode) & (arms.task == arms.trained_for)
              & arms.task.isin(gaps) & (arms.status == "ok")]  # fmt: skip
    rows = []
    for share in sorted(ed.budget_share.unique()):
        here = ed[ed.budget_share == share]
        if here["update"].nunique() < 2:
            continue
        main = macro(arms, items, gaps, "error_driven", share, main_update, mode)
        for update in sorted(here["update"].unique(), key=lambda u: (u != main_update, u)):
            values = main if update == main_update else macro(arms, items, gaps, "error_driven", share, update, mode)
            diff = "–" if update == main_update else fmt_diff(values, main)[0]
            g = here[here["update"] == update]
            rand = macro(arms, items, gaps, "random", share, update, mode)
            r = arms[(arms.strategy == "random") & (arms["update"] == update) & ((arms.budget_share - share).abs() < 1e-6)
                     & (arms.status == "ok")].drop_duplicates(subset=["run", "model"])  # fmt: skip
            rows.append([_budget_label(share), update, len(g), fmt_cell(mean_ci(values)), diff, t_interval(g.retention),
                         fmt_cell(mean_ci(rand)), fmt_diff(values, rand)[0], t_interval(r.retention)])  # fmt: skip
    header = ["budget", "update", "arms", "gap tasks, macro accuracy", f"− {main_update} [CI]", "retention",
              "random, same update", "error-driven − random [CI]", "retention (random)"]  # fmt: skip
    return _md(header, rows) if rows else ""


def precision_table(res: Results) -> str:
    """(vi) Selection precision@budget from each run's check (d): the share of targeted rows that exercise a
    true gap skill, by task, strategy (error-driven in another retrieval mode named with it) and budget (mean
    over seeds), and the pool's gap share. Error-driven arms of another update mode are left out: the grid
    gives them the selections of the main update's arms, which would count twice."""
    checks = res.checks
    if checks.empty:
        return "No run holds world checks (`<run>/checks/checks.json`)."
    update, mode = main_setting(res.arms)
    arms = res.arms.drop_duplicates(subset=["run", "model"])
    key = {(r.run, r.model): r for r in arms.itertuples()}
    run_task = dict(zip(arms.run, arms.trained_for))
    rows: dict[tuple[str, str, float], list[float]] = {}
    shares: dict[str, float] = {}
    for c in checks[checks.check == "d"].itertuples():
        task = run_task.get(c.run, c.run)
        shares[task] = c.measured.get("pool_gap_share")
        for name, a in (c.measured.get("arms") or {}).items():
            arm = key.get((c.run, name))
            driven = arm is not None and arm.strategy.startswith("error_driven")
            if driven and arm.update != update:
                continue  # the selection of the main update's arm of its seed, counted there
            strategy = arm.strategy if arm is not None else a.get("strategy")
            if driven and arm.mode != mode:
                strategy = f"{strategy} ({arm.mode})"
            share = arm.budget_share if arm is not None else a.get("budget_share")
            rows.setdefault((task, strategy, share), []).append(float(a["precision"]))
    out = [[t, s, _budget_label(b) if b is not None else "–", len(v), f"{sum(v) / len(v):.3f}", shares.get(t)]
           for (t, s, b), v in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0))]  # fmt: skip
    return _md(["run task", "strategy", "budget", "selections", "precision@budget", "pool gap share"], out)


def checks_table(res: Results) -> str:
    checks = res.checks
    if checks.empty:
        return ""
    rows = []
    for run, g in checks.groupby("run"):
        status = {c: s for c, s in zip(g.check, g.status)}
        rows.append([run] + [status.get(c, "–") for c in "abcde"])
    return _md(["run", "(a) gaps", "(b) replies", "(c) teacher", "(d) precision", "(e) headroom"], rows)


CSV_COLUMNS = ["task", "strategy", "budget_share", "seed", "update", "target_accuracy", "retention", "n_test",
               "run", "model", "trained_for", "budget", "mode", "query", "locator", "teacher", "general_accuracy",
               "status", "train_steps", "wall_s"]  # fmt: skip


def build(res: Results, out: Path, docs_rel: str, runs: Sequence[Path], gap_tasks: Sequence[str] = GAP_TASKS,
          controls: Sequence[str] = CONTROL_TASKS, ablation_budget: float = ABLATION_BUDGET) -> str:  # fmt: skip
    """Write ``arms.csv`` into ``out`` and return the markdown of the generated block (the ablations compared at
    ``ablation_budget``, a share of the pool)."""
    out.mkdir(parents=True, exist_ok=True)
    res.arms.reindex(columns=CSV_COLUMNS).sort_values(["task", "strategy", "budget_share", "seed", "run", "model"]).to_csv(
        out / "arms.csv", index=False
    )
    update, mode = main_setting(res.arms)
    h = headline(res, gap_tasks, controls)
    parts = [
        f"Runs: {', '.join(f'`{r}`' for r in runs)}. Accuracy in percent; cells are mean ± half-width of the 95 % "
        f"bootstrap interval over seed and test item. Main setting: {update} update, {mode} retrieval, exact teacher.",
        "",
        "### Headline",
        "",
        headline_text(h),
        "",
    ]
    by_budget = budget_table(res, gap_tasks, controls)
    if by_budget:
        parts += ["Error-driven minus random at every budget (macro accuracy; difference paired over seed and item):", "",
                  by_budget, ""]  # fmt: skip
    parts += [
        "### Target accuracy by task, strategy and budget",
        "",
        main_table(res, gap_tasks, controls),
        "",
        "### Error-driven at <= 10 % of the pool against the full pool",
        "",
        versus_full(res, gap_tasks, controls),
        "",
    ]
    insta = versus_insta(res, gap_tasks, controls)
    if insta:
        parts += ["### Error-driven against INSTA-style selection", "", insta, ""]
    parts += [
        "### Retention (general suite, relative to the base student)",
        "",
        retention_table(res),
        "",
        f"### Ablations (gap tasks, {_budget_label(ablation_budget)} budget)",
        "",
        ablation_table(res, gap_tasks, ablation_budget),
        "",
    ]
    upd = update_table(res, gap_tasks)
    if upd:
        parts += ["### Weight update (error-driven, gap tasks)", "", upd, ""]
    parts += ["### Selection precision@budget (check d)", "", precision_table(res), ""]
    chk = checks_table(res)
    if chk:
        parts += ["### World checks per run", "", chk, ""]
    walls = res.arms.drop_duplicates(subset=["run", "model"])
    walls = walls[walls.strategy != "none"]["wall_s"].dropna()
    if not walls.empty:
        parts += [f"{len(walls)} arms, median {walls.median():.1f} s per arm (select + train + evaluate).", ""]
    parts += [f"Every (arm, task evaluated), one row each: [`{docs_rel}/arms.csv`]({docs_rel}/arms.csv).", ""]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished edray run folders (run_config.json and round_0/evaluate/_SUCCESS)")
    parser.add_argument("--doc", type=Path, default=Path("docs/results.md"), help="markdown file to update")
    parser.add_argument("--out", type=Path, default=Path("docs/results"), help="folder for arms.csv")
    parser.add_argument("--gap-tasks", default=",".join(GAP_TASKS), help="comma-separated gap tasks (macro row, headline)")
    parser.add_argument("--controls", default=",".join(CONTROL_TASKS), help="comma-separated control tasks")
    parser.add_argument("--ablation-budget", type=float, default=ABLATION_BUDGET,
                        help=f"share of the pool at which the ablation table compares its arms (default {ABLATION_BUDGET})")
    args = parser.parse_args()
    for r in args.runs:
        if not (r / "run_config.json").is_file() or not (r / "round_0" / "evaluate" / "_SUCCESS").is_file():
            parser.error(f"{r}: not a finished run (needs run_config.json and round_0/evaluate/_SUCCESS)")
    # links in the markdown are relative to the markdown file, wherever the output folder is
    rel = os.path.relpath(args.out.resolve(), args.doc.resolve().parent)
    body = build(read_runs(args.runs), args.out, rel, args.runs, args.gap_tasks.split(","), args.controls.split(","),
                 args.ablation_budget)
    text = args.doc.read_text() if args.doc.exists() else f"# Results\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    args.doc.write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}")
    print(f"wrote {args.doc} and {args.out}/arms.csv")


if __name__ == "__main__":
    main()
