"""Write the run configs of the skills-world grid (jobs/experiments/grid/*.yaml) and its wall-time estimate.

The grid measures the method against its baselines on the seven target tasks (docs/results.md):

- ``<task>.yaml``, one run per target task, all on one world (``world.yaml``), one cached student and one
  index (built by ``corner.yaml``, shared through ``index_dir``). Each holds its task's error-driven arms
  (5 seeds at 5 % of the pool, 3 at 2 % and 10 %) and INSTA-style arms (3 seeds per budget). The gap
  tasks add the ablations at 2 % (the raw erroneous step as query; BM25 or dense retrieval instead of
  hybrid) and the weight updates at 5 % (LoRA and SPIDER beside full fine-tuning), 3 seeds each.
  ``corner.yaml`` also trains the arms that do not depend on the task (random at every budget with the
  error-driven seeds, the full pool and the oracle, 3 seeds) and evaluates them on all seven tasks.
- ``random_step_<task>.yaml`` and ``noisy_teacher_<task>.yaml``, per gap task: the ablations that need their
  own diagnosis (a random step instead of the answer switch; a teacher that shifts its belief on a
  neighbouring step or names another skill 20 % of the time each), 3 seeds at 2 %.

Every arm trains the same ``train.max_steps`` optimizer steps whatever its budget (docs/train.md, "Fair
arms"). Run ``python jobs/experiments/grid/make_grid.py`` after changing this file; a unit test checks that
the YAML files are what it writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REL = "jobs/experiments/grid"
WORLD_DIR = "runs/grid_world"
RUNS = "runs/grid"

GAP_TASKS = ("corner", "colour_corner", "locate_item", "spot_item", "outnumber")
CONTROL_TASKS = ("same_colour_count", "big_one_shape")
TASKS = GAP_TASKS + CONTROL_TASKS
INDEX_TASK = GAP_TASKS[0]  # its run builds the index the others share, and trains the task-free arms

POOL_ROWS = 20_000
VAL_ROWS, TEST_ROWS, GENERAL_ROWS = 1000, 1000, 1200
BUDGETS = {2: 400, 5: 1000, 10: 2000}  # percent of the pool -> rows
SEEDS = {2: 3, 5: 5, 10: 3}  # the headline budget (5 %) gets 5 seeds
MAX_STEPS = 64  # one epoch of the 10 % budget at batch 32; every arm, every budget
BATCH = 32
LORA_OPTIM = "optim: {lr: 0.002, warmup_steps: 5}"  # in 1e-3..3e-3; the sweep is pending (docs/train.md)
LORA_RECIPE = '{rank: 16, alpha: 32, dropout: 0.0, targets: ".*language_model.*\\\\.(q|k|v|o|gate|up|down)_proj", train_projector: true}'

# --- the wall-time estimate ------------------------------------------------------------------------------
# Measured on 2 cores with two arms at a time (jobs/experiments/selection.yaml through the arm runner,
# docs/results.md "Reading"; error-driven arms of 9, 27 and 54 steps took 6.1, 11.0 and 20.2 s, the full pool
# 561 steps in 186 s; evaluation 3.5 s per model for 900 rows; world 8 s, index 43 s for 6,000 rows;
# diagnosis 78 s for 300 validation rows; INSTA 40 s more than error-driven). Cross-check: docs/train.md measures
# 74-76 ms per in-process step at batch 8, about 0.3 s at batch 32.
STEP_S = 0.32
EVAL_S_PER_ROW = 3.5 / 900
INSTA_EXTRA_S = 40.0
DIAGNOSE_S_PER_ROW = 78 / 300
INDEX_S_PER_ROW = 43 / 6000
WORLD_S_PER_ROW = 8 / 6000
CONCURRENT_ARMS = 2


@dataclass
class Arm:
    """One arm of a run config: ``select`` and ``fields`` are further YAML of the arm (flow style)."""

    name: str
    strategy: str
    pct: int | None  # budget in percent of the pool; None: the full pool
    seed: int
    fields: str = ""  # e.g. "mode: bm25" or "train_mode: lora"
    select: str = ""  # e.g. "query: step"
    train: str = ""  # further train fields, e.g. "optim: {lr: 0.002}"
    eval_all: bool = False  # evaluated on all seven tasks (arms that do not depend on the task)

    def yaml(self) -> str:
        select = ", ".join(x for x in (self.select, f"budget: {BUDGETS[self.pct]}" if self.pct else "", f"seed: {self.seed}") if x)
        parts = [f"name: {self.name}", f"strategy: {self.strategy}", self.fields, f"select: {{{select}}}", "train: {" + ", ".join(x for x in (f"seed: {self.seed}", self.train) if x) + "}"]
        if self.eval_all:
            parts.append("eval_tasks: [" + ", ".join(t for t in TASKS if t != INDEX_TASK) + "]")
        return "  - {" + ", ".join(p for p in parts if p) + "}"

    def eval_rows(self) -> int:
        return TEST_ROWS * (len(TASKS) if self.eval_all else 1) + GENERAL_ROWS

    def seconds(self) -> float:
        s = MAX_STEPS * STEP_S + self.eval_rows() * EVAL_S_PER_ROW
        return s + (INSTA_EXTRA_S if self.strategy == "insta" else 0.0)


def budget_arms(prefix: str, strategy: str, seeds: dict[int, int], eval_all: bool = False) -> list[Arm]:
    return [Arm(f"{prefix}-b{pct}-s{s}", strategy, pct, s, eval_all=eval_all) for pct in (5, 2, 10) for s in range(seeds[pct])]


def task_arms(task: str) -> list[Arm]:
    """The arms of ``<task>.yaml``; the first (error-driven at 5 %, seed 0) is the run's main arm."""
    three = {pct: 3 for pct in BUDGETS}
    arms = budget_arms("ed", "error_driven", SEEDS) + budget_arms("insta", "insta", three)
    if task in GAP_TASKS:
        arms += [Arm(f"ed-step-b2-s{s}", "error_driven", 2, s, select="query: step") for s in range(3)]
        arms += [Arm(f"ed-{m}-b2-s{s}", "error_driven", 2, s, f"mode: {m}") for m in ("bm25", "dense") for s in range(3)]
        arms += [Arm(f"ed-lora-b5-s{s}", "error_driven", 5, s, "train_mode: lora", train=LORA_OPTIM) for s in range(3)]
        arms += [Arm(f"ed-spider-b5-s{s}", "error_driven", 5, s, "train_mode: spider") for s in range(3)]
    if task == INDEX_TASK:
        arms += budget_arms("random", "random", SEEDS, eval_all=True)
        arms += [Arm(f"full-s{s}", "full", None, s, eval_all=True) for s in range(3)]
        arms += [Arm(f"oracle-b5-s{s}", "oracle", 5, s, eval_all=True) for s in range(3)]
    return arms


def variant_arms(prefix: str) -> list[Arm]:
    return [Arm(f"{prefix}-b2-s{s}", "error_driven", 2, s) for s in range(3)]


# --- the YAML --------------------------------------------------------------------------------------------


def estimate() -> dict[str, float]:
    """Seconds of the whole grid, by part (an estimate from the measured rates above)."""
    runs = [(t, task_arms(t)) for t in TASKS] + [(f"{v}_{t}", variant_arms(v)) for v in ("random_step", "noisy_teacher") for t in GAP_TASKS]
    arms_s = sum(a.seconds() for _, arms in runs for a in arms) / CONCURRENT_ARMS
    base_s = sum(max((a.eval_rows() for a in arms), default=0) * EVAL_S_PER_ROW for _, arms in runs)
    return {
        "runs": len(runs),
        "arms": sum(len(arms) for _, arms in runs),
        "world": POOL_ROWS * WORLD_S_PER_ROW,
        "index": POOL_ROWS * INDEX_S_PER_ROW,
        "diagnose": len(runs) * VAL_ROWS * DIAGNOSE_S_PER_ROW,
        "arms_s": arms_s + base_s,
        "phase1": sum(1 for r, _ in runs if r in TASKS),
    }


def _minutes(s: float) -> str:
    return f"{s / 60:.0f} min" if s >= 600 else f"{s / 60:.1f} min"


def readme() -> list[str]:
    e = estimate()
    first = [(t, task_arms(t)) for t in TASKS]
    first_s = (e["world"] + e["index"] + len(TASKS) * VAL_ROWS * DIAGNOSE_S_PER_ROW
               + sum(a.seconds() for _, arms in first for a in arms) / CONCURRENT_ARMS)  # fmt: skip
    total_s = e["world"] + e["index"] + e["diagnose"] + e["arms_s"]
    names = " ".join(TASKS)
    variants = "{random_step,noisy_teacher}_{" + ",".join(GAP_TASKS) + "}"
    return [
        "The skills-world grid of docs/results.md (written by jobs/experiments/grid/make_grid.py; edit that, not",
        "this file). Run from the repository root, in this order (corner builds the index the others share):",
        "",
        f"  edray world generate --config {REL}/world.yaml --out {WORLD_DIR}",
        f"  for c in {names}; do",
        f"    edray run --config {REL}/$c.yaml --run-dir {RUNS}/$c; done",
        f"  for c in {variants}; do",
        f"    edray run --config {REL}/$c.yaml --run-dir {RUNS}/$c; done",
        f"  python jobs/experiments/summarize.py {RUNS}/*/",
        "",
        f"{e['runs']} runs, {e['arms']} arms; every arm trains {MAX_STEPS} optimizer steps of batch {BATCH} whatever its budget",
        f"(2 / 5 / 10 % = {BUDGETS[2]:,} / {BUDGETS[5]:,} / {BUDGETS[10]:,} of the {POOL_ROWS:,}-row pool). Expected wall time on 2 cores, an",
        "ESTIMATE from the per-arm times measured on the previous grid (docs/results.md, \"Reading\"; make_grid.py",
        f"has the rates), with the student already pretrained: the seven task runs about {_minutes(first_s)}, the whole",
        f"grid about {_minutes(total_s)} (world {_minutes(e['world'])}, index {_minutes(e['index'])}, diagnoses "
        f"{_minutes(e['diagnose'])}, arms {_minutes(e['arms_s'])}, two at a time).",
        "Over budget: trim the INSTA and ablation seeds first, never the 5 % headline's five.",
        "Every run is resumable: the same command skips finished stages and arms.",
    ]


def common(task: str, index: bool, teacher: str = "", diagnose_extra: str = "") -> list[str]:
    lines = [f"task: {task}", "rounds: 1", f"world_dir: {WORLD_DIR}"]
    if teacher:
        lines += ["world:", f"  teacher: {teacher}"]
    if not index:
        lines.append(f"index_dir: {RUNS}/{INDEX_TASK}/index   # built by {INDEX_TASK}.yaml")
    lines += [
        "pretrain:",
        "  # the student that passes check (a) (docs/world.md, \"10,000 steps\"; jobs/experiments/headline_long/ shares it):",
        "  # vision warm-up (200 steps), projector alignment (300), then 10,000 instruction steps of batch 32 over 48,000",
        "  # rows, existence and counting by attribute weighted x4; about 17 min on 2 cores, once for the whole grid",
        "  {num_rows: 48000, steps: 10000, batch_size: 32, warmup_steps: 100, log_every: 500, eval_size: 1200, vision_steps: 200, align_steps: 300,",
        "   seed: 1, student: {seed: 1}, mix: {color_existence: 4, shape_existence: 4, counting_by_color: 4, counting_by_shape: 4}}",
        "index:",
        "  # the skills world's teacher annotates the pool, in process (the default teacher is an HTTP endpoint)",
        '  annotate: {backend: engine, engine: "edray.world.teacher:WorldTeacher"}',
        "  embed: {actors: 1, num_cpus: 0.9, batch_size: 256}",
        "diagnose:",
        "  student: {max_tokens: 96, family: plain}" + (f"\n  {diagnose_extra}" if diagnose_extra else ""),
        "select:",
        "  mode: hybrid",
        "  replay_share: 0.0         # the method as published: no replay, so retention shows what each choice costs",
        "train:",
        "  # Full fine-tuning of the projector and the last decoder layers; the LoRA arms use the recipe of docs/train.md.",
        f"  # Fair arms: {MAX_STEPS} optimizer steps for every arm and budget; budgets differ only in data.",
        "  mode: full",
        f"  max_steps: {MAX_STEPS}",
        f"  batch_size: {BATCH}",
        "  optim: {lr: 0.001, warmup_steps: 5}",
        f"  lora: {LORA_RECIPE}   # the LoRA arms' recipe (docs/train.md)",
        "  checkpoint_every: 32",
        "evaluate:",
        "  generation: {batch_size: 64, max_tokens: 96, family: plain}",
        "report: true",
    ]
    return lines


def config(name: str, about: list[str], body: list[str], arms: list[Arm]) -> str:
    head = [f"# edray run --config {REL}/{name}.yaml --run-dir {RUNS}/{name}",
            f"# ray job submit --working-dir . -- edray run --config {REL}/{name}.yaml --run-dir {RUNS}/{name}", "#"]  # fmt: skip
    head += [f"# {line}".rstrip() for line in about + [""] + readme()]
    lines = head + body
    lines.append("arms:")
    lines += [a.yaml() for a in arms]
    return "\n".join(lines) + "\n"


def world_yaml() -> str:
    lines = [f"# edray world generate --config {REL}/world.yaml --out {WORLD_DIR}",
             f"# ray job submit --working-dir . -- edray world generate --config {REL}/world.yaml --out {WORLD_DIR}", "#",
             "# The one world every run of the grid reads (world_dir): the supporting pool, the seven target tasks'",
             f"# validation and test splits ({VAL_ROWS:,} rows each, the same rows for every arm) and the general suite.",
             "# The pool's mix is the world's default (the student's gap skills scarce, docs/world.md).", "#"]  # fmt: skip
    lines += [f"# {line}".rstrip() for line in readme()]
    lines += [
        "pool:",
        f"  pool_size: {POOL_ROWS}",
        "  seed: 0",
        "  formats: [parquet]",
        "eval:",
        f"  val_size: {VAL_ROWS}",
        f"  test_size: {TEST_ROWS}",
        f"  general_size: {GENERAL_ROWS}      # about 100 rows per skill: the retention measurement",
        "  target_tasks: []          # all seven: five gap tasks and two controls",
    ]
    return "\n".join(lines) + "\n"


def grid_files() -> dict[str, str]:
    """File name -> content of every YAML of the grid."""
    files = {"world.yaml": world_yaml()}
    for task in TASKS:
        kind = "a gap task" if task in GAP_TASKS else "a control (no gap: error-driven should equal random)"
        about = [f"Target task {task}, {kind}: error-driven and INSTA-style arms at 2 / 5 / 10 % of the pool."]
        if task in GAP_TASKS:
            about.append("Ablations at 2 % (raw erroneous step as query; BM25 / dense retrieval) and LoRA / SPIDER at 5 %.")
        if task == INDEX_TASK:
            about.append("Builds the index the other runs share, and trains the arms that do not depend on the task")
            about.append("(random, full pool, oracle), evaluated on all seven tasks (eval_tasks).")
        files[f"{task}.yaml"] = config(task, about, common(task, index=task == INDEX_TASK), task_arms(task))
    for task in GAP_TASKS:
        about = [f"Ablation on {task}: the teacher names the skill of a random step of each wrong answer instead of",
                 "the first erroneous step the answer switch finds; error-driven arms at 2 %, 3 seeds."]  # fmt: skip
        files[f"random_step_{task}.yaml"] = config(
            f"random_step_{task}", about, common(task, index=False, diagnose_extra="locate: {method: random}"), variant_arms("ed-randstep")
        )
        about = [f"Noisy teacher on {task}: the world teacher's belief shift lands on a neighbouring step 20 % of the",
                 "time and it names another skill 20 % of the time; error-driven arms at 2 %, 3 seeds."]  # fmt: skip
        files[f"noisy_teacher_{task}.yaml"] = config(
            f"noisy_teacher_{task}", about, common(task, index=False, teacher="{noise: {wrong_step: 0.2, wrong_skill: 0.2}}"),
            variant_arms("ed-noisy"),
        )
    return files


def main() -> None:
    for name, text in grid_files().items():
        (HERE / name).write_text(text)
    e = estimate()
    print(f"wrote {len(grid_files())} files to {HERE}: {e['runs']} runs, {e['arms']} arms")


if __name__ == "__main__":
    main()
