"""The results tables of jobs/experiments/summarize.py on a constructed arms frame (no Ray, no runs):
the headline picks exactly the error-driven and random arms of the gap tasks at 5 % in the main setting,
its paired bootstrap CI covers the true difference, and the main table's cells come from the right arms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.fixtures.scripts import load_script


@pytest.fixture(scope="module")
def summarize():
    return load_script("jobs/experiments/summarize.py", "grid_summarize")


GAPS, CONTROLS = ("g1", "g2"), ("c1",)
N_ITEMS, SEEDS = 400, range(5)
# true accuracies: error-driven 0.70 on the gap tasks, random 0.40 (difference 0.30); on the control both 0.50
P = {("error_driven", "g1"): 0.7, ("error_driven", "g2"): 0.7, ("random", "g1"): 0.4, ("random", "g2"): 0.4,
     ("error_driven", "c1"): 0.5, ("random", "c1"): 0.5, ("none", "g1"): 0.1, ("none", "g2"): 0.1, ("none", "c1"): 0.5}  # fmt: skip


def _arm(run, model, task, trained_for, strategy, share, seed, update="full", mode="hybrid"):
    return {"run": run, "model": model, "task": task, "trained_for": trained_for, "strategy": strategy,
            "budget_share": share, "seed": seed, "update": update, "mode": mode, "status": "ok", "retention": 0.9,
            "general_accuracy": 0.6, "target_accuracy": None, "n_test": N_ITEMS}  # fmt: skip


def _frame(decoys: bool = True):
    rng = np.random.default_rng(0)
    arms, items = [], []

    def add(arm, p):
        arms.append(arm)
        correct = rng.random(N_ITEMS) < p
        items.extend({"run": arm["run"], "model": arm["model"], "task": arm["task"], "id": f"{arm['task']}-{i}",
                      "correct": bool(c)} for i, c in enumerate(correct))  # fmt: skip

    for task in GAPS + CONTROLS:
        add(_arm(f"run-{task}", "base", task, task, "none", 0.0, 0), P[("none", task)])
        for s in SEEDS:
            add(_arm(f"run-{task}", f"ed-s{s}", task, task, "error_driven", 0.05, s), P[("error_driven", task)])
            # random arms are trained once (in one run) and evaluated on every task
            add(_arm("run-g1", f"random-s{s}", task, "g1", "random", 0.05, s), P[("random", task)])
    if decoys:
        for s in SEEDS:
            # none of these may enter the headline: another budget, another task's selection, an ablation,
            # another update mode, another retrieval mode
            add(_arm("run-g1", f"random-2pct-s{s}", "g1", "g1", "random", 0.02, s), 0.0)
            add(_arm("run-g2", f"ed-s{s}", "g1", "g2", "error_driven", 0.05, s), 1.0)
            add(_arm("run-g1", f"ed-step-s{s}", "g1", "g1", "error_driven_raw_step", 0.05, s), 1.0)
            add(_arm("run-g1", f"ed-lora-s{s}", "g1", "g1", "error_driven", 0.05, s, update="lora"), 1.0)
            add(_arm("run-g2", f"ed-bm25-s{s}", "g2", "g2", "error_driven", 0.05, s, mode="bm25"), 1.0)
    arms_df, items_df = pd.DataFrame(arms), pd.DataFrame(items)
    acc = items_df.groupby(["run", "model", "task"]).correct.mean().rename("target_accuracy").reset_index()
    arms_df = arms_df.drop(columns="target_accuracy").merge(acc, on=["run", "model", "task"])
    return arms_df, items_df


def _results(summarize, decoys: bool = True):
    arms, items = _frame(decoys)
    return summarize.Results(arms, items, pd.DataFrame(columns=["run", "check", "name", "status", "explanation", "measured"]))


def test_headline_ci_covers_the_true_difference_and_uses_only_the_right_arms(summarize) -> None:
    res = _results(summarize)
    h = summarize.headline(res, GAPS, CONTROLS)
    gap, ctrl = h["gap"], h["controls"]
    assert gap.n_seeds == 5 and gap.n == 5 * N_ITEMS * len(GAPS)
    assert gap.low < 0.30 < gap.high and gap.high - gap.low < 0.1
    assert ctrl.low < 0.0 < ctrl.high and ctrl.n == 5 * N_ITEMS
    # the point estimate is exactly the mean over the right arms' answers (the decoys would pull it up)
    arms, items = res.arms, res.items
    right = arms[(arms.budget_share == 0.05) & (arms.task == arms.trained_for) & (arms["update"] == "full") & (arms["mode"] == "hybrid")
                 & arms.task.isin(GAPS) & (arms.strategy == "error_driven")]  # fmt: skip
    rand = arms[(arms.budget_share == 0.05) & (arms.strategy == "random") & arms.task.isin(GAPS)]
    mean = lambda sel: items.merge(sel[["run", "model", "task"]]).correct.mean()  # noqa: E731
    assert len(right) == len(rand) == 10
    assert gap.mean == pytest.approx(mean(right) - mean(rand))
    # without the decoys the headline is the same: they were never picked
    assert summarize.headline(_results(summarize, decoys=False), GAPS, CONTROLS)["gap"].mean == pytest.approx(gap.mean)


def test_budget_table_has_a_row_per_budget_with_both_strategies_and_the_headline_difference(summarize) -> None:
    res = _results(summarize)
    table = summarize.budget_table(res, GAPS, CONTROLS).splitlines()
    rows = [[c.strip() for c in r.strip("|").split("|")] for r in table[2:]]
    # the 2 % random decoys have no error-driven arms at 2 %: one row, the headline's budget
    assert [r[0] for r in rows] == ["5 %"]
    h = summarize.headline(res, GAPS, CONTROLS)
    assert float(rows[0][3].split(" [")[0]) == pytest.approx(100 * h["gap"].mean, abs=0.051)
    assert float(rows[0][6].split(" [")[0]) == pytest.approx(100 * h["controls"].mean, abs=0.051)
    assert float(rows[0][2].split(" ± ")[0]) == pytest.approx(40.0, abs=4.0)  # random's true 0.40 on the gap tasks


def test_main_table_rows_are_tasks_and_macros_and_cells_are_mean_and_ci(summarize) -> None:
    res = _results(summarize, decoys=False)
    table = summarize.main_table(res, GAPS, CONTROLS).splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == ["task", "none", "random 5 %", "error_driven 5 %"]
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")[1:]] for r in table[2:]}
    assert list(rows) == ["g1", "g2", "c1", "macro: gap tasks (2)"]
    ed = float(rows["macro: gap tasks (2)"][header.index("error_driven 5 %") - 1].split(" ± ")[0])
    arms, items = res.arms, res.items
    sel = arms[(arms.strategy == "error_driven") & arms.task.isin(GAPS)]
    assert ed == pytest.approx(100 * items.merge(sel[["run", "model", "task"]]).correct.mean(), abs=0.051)
    assert all("±" in c for c in rows["g1"])


def test_main_table_ends_with_the_score_of_always_giving_the_most_common_answer(summarize) -> None:
    res = _results(summarize, decoys=False)
    assert "one answer" not in summarize.main_table(res, GAPS, CONTROLS)  # no gold answers: no column
    # g1's test rows answer "more" 3 times in 4, g2's and c1's split evenly between two answers
    ids = res.items["id"].str.rsplit("-", n=1).str[1].astype(int)
    res.items["gold"] = np.where(res.items.task == "g1", np.where(ids % 4 < 3, "more", "fewer"), np.where(ids % 2 == 0, "yes", "no"))
    table = summarize.main_table(res, GAPS, CONTROLS).splitlines()
    assert [c.strip() for c in table[0].strip("|").split("|")][-1] == "one answer"
    floor = {r.split("|")[1].strip(): r.strip("|").split("|")[-1].strip() for r in table[2:]}
    assert floor == {"g1": "75.0", "g2": "50.0", "c1": "50.0", "macro: gap tasks (2)": "62.5"}


def test_ablation_and_retention_tables_name_each_variant_once(summarize) -> None:
    res = _results(summarize)
    # the decoy ablation arms exist for one task each, so each shows in that task's macro only
    raw = summarize.ablation_table(res, ("g1",), budget=0.05)
    bm25 = summarize.ablation_table(res, ("g2",), budget=0.05)
    assert "raw erroneous step" in raw and "raw erroneous step" not in bm25
    assert "retrieval bm25 instead of hybrid" in bm25 and "bm25" not in raw
    assert raw.count("the method") == 1 and "| no tuning |" in raw
    # the method's row is the main setting's error-driven arms of g1: its mean, and the decoy (all correct) differs by its gap
    line = next(r for r in raw.splitlines() if r.startswith("| raw erroneous step"))
    method = next(r for r in raw.splitlines() if "the method" in r)
    assert float(line.split("|")[2].split(" ± ")[0]) == 100.0
    assert float(line.split("|")[3].split(" [")[0]) == pytest.approx(100.0 - float(method.split("|")[2].split(" ± ")[0]), abs=0.11)
    # retention: one value per trained arm on its own task (5 seeds x 3 tasks), main retrieval mode only
    retention = summarize.retention_table(res)
    assert "| error_driven | full | 5 % | 15 |" in retention and "| error_driven | lora | 5 % | 5 |" in retention
    assert "| random | full | 5 % | 5 |" in retention and "| random | full | 2 % | 5 |" in retention


def test_build_compares_the_ablations_at_the_budget_it_is_given(summarize, tmp_path) -> None:
    res = _results(summarize)
    res.arms["wall_s"] = 10.0
    # the raw-step decoys (g1 only) sit at 5 %: the default 2 % table has neither them nor the method, the 5 % one both
    at_two = summarize.build(res, tmp_path / "a", "results", [Path("run-g1")], ("g1",), CONTROLS)
    at_five = summarize.build(res, tmp_path / "b", "results", [Path("run-g1")], ("g1",), CONTROLS, ablation_budget=0.05)
    block = at_five.split("### Ablations (gap tasks, 5 % budget)")[1].split("###")[0]
    assert "raw erroneous step" in block and "the method" in block
    assert "raw erroneous step" not in at_two.split("### Ablations (gap tasks, 2 % budget)")[1].split("###")[0]


def test_error_driven_against_insta_is_paired_per_task_and_macro(summarize) -> None:
    res = _results(summarize, decoys=False)
    assert summarize.versus_insta(res, GAPS, CONTROLS) == ""  # no INSTA arm: no table
    rng = np.random.default_rng(1)
    arms, items = [res.arms], [res.items]
    for task in GAPS:
        for s in SEEDS:
            arm = _arm(f"run-{task}", f"insta-s{s}", task, task, "insta", 0.05, s)
            correct = rng.random(N_ITEMS) < 0.5  # error-driven is 0.7 on the gap tasks: the difference is +20
            arm["target_accuracy"] = correct.mean()
            arms.append(pd.DataFrame([arm]))
            items.append(pd.DataFrame({"run": arm["run"], "model": arm["model"], "task": task,
                                       "id": [f"{task}-{i}" for i in range(N_ITEMS)], "correct": correct}))  # fmt: skip
    res = summarize.Results(pd.concat(arms, ignore_index=True), pd.concat(items, ignore_index=True), res.checks)
    table = summarize.versus_insta(res, GAPS, CONTROLS)
    rows = {r.split("|")[1].strip(): r.split("|")[2].strip() for r in table.splitlines()[2:]}
    for task in GAPS:
        mean, low, high = (float(x) for x in rows[task].replace("[", "").replace("]", "").replace(",", "").split())
        assert low < mean < high and mean == pytest.approx(20.0, abs=4.0) and low > 0
    assert rows["c1"] == "–"  # no INSTA arm on the control
    assert float(rows["macro: gap tasks (2)"].split(" [")[0]) == pytest.approx(20.0, abs=3.0)


def test_update_table_pairs_each_update_with_the_main_one_in_the_main_retrieval_mode(summarize) -> None:
    res = _results(summarize)
    arms, items = [res.arms], [res.items]
    for s in SEEDS:
        # full fine-tuning in another retrieval mode: must stay out of the full row
        arm = _arm("run-g1", f"ed-dense-s{s}", "g1", "g1", "error_driven", 0.05, s, mode="dense")
        correct = np.zeros(N_ITEMS, dtype=bool)
        arm["target_accuracy"] = correct.mean()
        arms.append(pd.DataFrame([arm]))
        items.append(pd.DataFrame({"run": arm["run"], "model": arm["model"], "task": "g1",
                                   "id": [f"g1-{i}" for i in range(N_ITEMS)], "correct": correct}))  # fmt: skip
    res = summarize.Results(pd.concat(arms, ignore_index=True), pd.concat(items, ignore_index=True), res.checks)
    table = summarize.update_table(res, ("g1",)).splitlines()
    assert table[0] == ("| budget | update | arms | gap tasks, macro accuracy | − full [CI] | retention | random, same update "
                        "| error-driven − random [CI] | retention (random) |")  # fmt: skip
    rows = {r.split("|")[2].strip(): [c.strip() for c in r.strip("|").split("|")] for r in table[2:]}
    assert list(rows) == ["full", "lora"]
    assert rows["full"][2] == "5" and rows["lora"][2] == "5"
    full = float(rows["full"][3].split(" ± ")[0])
    assert full == pytest.approx(70.0, abs=4.0)  # the dense decoys (all wrong) would pull it down to about 35
    assert rows["lora"][3].startswith("100.0")
    diff, low, high = (float(x) for x in rows["lora"][4].replace("[", "").replace("]", "").replace(",", "").split())
    assert diff == pytest.approx(100.0 - full, abs=0.11) and low < diff < high
    # the random arms of 5 % under full fine-tuning (true accuracy 0.40), not the 2 % decoys (all wrong); none under LoRA
    assert float(rows["full"][6].split(" ± ")[0]) == pytest.approx(40.0, abs=4.0)
    gain = float(rows["full"][7].split(" [")[0])
    assert gain == pytest.approx(full - float(rows["full"][6].split(" ± ")[0]), abs=0.11)
    assert rows["lora"][6] == rows["lora"][7] == rows["lora"][8] == "–"
    # g2 has one update mode only: no table
    assert summarize.update_table(res, ("g2",)) == ""


def test_precision_table_names_other_retrieval_modes_and_skips_repeated_selections(summarize) -> None:
    res = _results(summarize)
    measured = {"pool_gap_share": 0.07, "arms": {"ed-s0": {"precision": 0.9}, "ed-bm25-s0": {"precision": 0.5}}}
    lora = {"pool_gap_share": 0.07, "arms": {"ed-s0": {"precision": 0.8}, "ed-lora-s0": {"precision": 0.8}}}
    checks = pd.DataFrame([{"run": "run-g2", "check": "d", "name": "selection_precision", "status": "fail", "explanation": "", "measured": measured},
                           {"run": "run-g1", "check": "d", "name": "selection_precision", "status": "fail", "explanation": "", "measured": lora}])  # fmt: skip
    table = summarize.precision_table(summarize.Results(res.arms, res.items, checks))
    assert "| g2 | error_driven | 5 % | 1 | 0.900 | 0.07 |" in table
    assert "| g2 | error_driven (bm25) | 5 % | 1 | 0.500 | 0.07 |" in table
    # the LoRA arm trained on the selection of ed-s0: counted once
    assert "| g1 | error_driven | 5 % | 1 | 0.800 | 0.07 |" in table
