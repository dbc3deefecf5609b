"""The five checks a skills-world run must pass before its arms are worth comparing.

Each check reads the stages' output files (never their code) and the world's ground truth, and says
whether the world is a fair test of the method:

- (a) ``student_gaps``: the base student is strong on the non-gap skills (>= 0.85 on the general suite)
  and at chance on the gap skills (<= chance + 10 points).
- (b) ``base_errors``: its wrong target answers are well formed (>= 95 %), reason in >= 2 steps on
  average, and >= 70 % of them go wrong first at a gap skill.
- (c) ``located_steps``: the diagnose stage locates the true erroneous step and names its true skill
  for >= 95 % of the errors (meaningful with the exact world teacher).
- (d) ``selection_precision``: >= 80 % of the error-driven selection's targeted rows (replay left out)
  exercise a gap skill; a random selection's precision is reported beside the pool's gap share.
- (e) ``headroom``: an arm trained on ground-truth gap rows (:mod:`edray.world.oracle`) beats the
  random arm by >= 15 points of target accuracy.

:func:`run_checks` writes them to ``checks.json`` and ``checks.parquet``; :func:`format_checks`
renders the console table; ``edray world check --run-dir RUN`` does both for a run folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from edray.evaluate.stats import paired_bootstrap
from edray.schemas import EVAL_PREDICTIONS, EVAL_SCORES, SCORE_ALL
from edray.world.ground_truth import error_profile, gap_share, located_step_scores, precision_at_budget
from edray.world.student_eval import chance_by_skill

CHECKS_JSON = "checks.json"
CHECKS_PARQUET = "checks.parquet"
PASS, FAIL, NOT_MEASURED = "pass", "fail", "not_measured"

NONGAP_MIN = 0.85
GAP_OVER_CHANCE = 0.10
WELL_FORMED_MIN = 0.95
MEAN_STEPS_MIN = 2.0
GAP_ERROR_SHARE_MIN = 0.70
LOCATED_MIN = 0.95
PRECISION_MIN = 0.80
HEADROOM_MIN = 0.15
# A random selection's precision is "about the pool share" when within this many binomial standard
# errors of it (or 5 points, whichever is wider).
RANDOM_TOLERANCE_SE = 3.0

CHECKS_SCHEMA = pa.schema(
    [
        pa.field("check", pa.string(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("passed", pa.bool_(), nullable=False),
        pa.field("threshold", pa.string(), nullable=False),
        pa.field("explanation", pa.string(), nullable=False),
        pa.field("measured", pa.string(), nullable=False),  # JSON
    ]
)


@dataclass
class CheckResult:
    """The outcome of one check.

    Attributes:
        check: its letter in the issue's list (``a`` .. ``e``).
        name: a short identifier.
        measured: the numbers it measured (JSON-serializable).
        threshold: what passing requires, in words.
        status: ``pass``, ``fail``, or ``not_measured`` (an input is missing; never a pass).
        explanation: one line on why it passed or failed.
    """

    check: str
    name: str
    measured: dict[str, Any]
    threshold: str
    status: str
    explanation: str
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        self.passed = self.status == PASS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _round(x: float) -> float:
    return round(float(x), 4)


def _read_scores(evaluate_dir: Path) -> list[dict[str, Any]]:
    return pq.read_table(Path(evaluate_dir) / EVAL_SCORES).to_pylist()


def _overall(
    scores: Sequence[Mapping[str, Any]], model: str, suite: str, skill: str = SCORE_ALL, task: str | None = None
) -> float | None:
    """A model's accuracy on a suite: on one task when ``task`` is given and scored on its own (an arm
    evaluated on several target tasks), else over the suite."""
    found = None
    for s in scores:
        if s["model"] == model and s["suite"] == suite and s["skill"] == skill:
            if task is not None and s["task"] == task:
                return float(s["accuracy"])
            if s["task"] == SCORE_ALL:
                found = float(s["accuracy"])
    return found


# --- (a) ----------------------------------------------------------------------------------------------

_GAPS_THRESHOLD = f"non-gap skills >= {NONGAP_MIN:.2f}; gap skills <= chance + {GAP_OVER_CHANCE:.2f}"


def check_student_gaps(
    evaluate_dir: Path, general_rows: Sequence[Mapping[str, Any]], gap_skills: Collection[str], base_model: str = "base"
) -> CheckResult:
    """(a) The base student's per-skill accuracy on the general suite against its designed gaps.

    Args:
        evaluate_dir: a committed evaluate stage folder (``scores.parquet``).
        general_rows: the general-suite rows it scored (for each skill's chance level).
        gap_skills: the designed gap skills.
        base_model: the base student's name in ``scores.parquet``.
    """
    scores = [s for s in _read_scores(evaluate_dir) if s["model"] == base_model and s["suite"] == "general"]
    per_skill = {s["skill"]: float(s["accuracy"]) for s in scores if s["task"] == SCORE_ALL and s["skill"] != SCORE_ALL}
    if not per_skill:
        return CheckResult("a", "student_gaps", {}, _GAPS_THRESHOLD, NOT_MEASURED, f"no general-suite scores of model {base_model!r}")
    return student_gaps(per_skill, general_rows, gap_skills)


def student_gaps(
    per_skill: Mapping[str, float], general_rows: Sequence[Mapping[str, Any]], gap_skills: Collection[str]
) -> CheckResult:
    """(a) from per-skill accuracies already measured, e.g. by ``edray world pretrain`` on its own
    general-suite rows (``eval_size``), so a recipe can be judged before any run uses it.

    Args:
        per_skill: skill -> accuracy on ``general_rows``.
        general_rows: the general-suite rows scored (for each skill's chance level).
        gap_skills: the designed gap skills.
    """
    threshold = _GAPS_THRESHOLD
    per_skill = {s: float(a) for s, a in per_skill.items()}
    if not per_skill:
        return CheckResult("a", "student_gaps", {}, threshold, NOT_MEASURED, "no per-skill accuracies")
    chance = chance_by_skill(general_rows)
    gaps = sorted(set(gap_skills) & set(per_skill))
    nongap = {s: a for s, a in per_skill.items() if s not in gap_skills}
    weak = sorted(s for s, a in nongap.items() if a < NONGAP_MIN)
    over = sorted(s for s in gaps if per_skill[s] > chance.get(s, 0.0) + GAP_OVER_CHANCE)
    measured = {
        "per_skill": {s: _round(a) for s, a in sorted(per_skill.items())},
        "chance": {s: _round(chance[s]) for s in sorted(per_skill) if s in chance},
        "gap_skills": sorted(gap_skills),
        "nongap_min": _round(min(nongap.values())) if nongap else None,
        "gap_over_chance_max": _round(max(per_skill[s] - chance.get(s, 0.0) for s in gaps)) if gaps else None,
    }
    missing = sorted(set(gap_skills) - set(per_skill))
    if missing:
        return CheckResult("a", "student_gaps", measured, threshold, NOT_MEASURED, f"the general suite has no rows of gap skills {missing}")
    if weak or over:
        parts = []
        if weak:
            parts.append(f"non-gap below {NONGAP_MIN:.2f}: " + ", ".join(f"{s} {nongap[s]:.2f}" for s in weak))
        if over:
            listed = ", ".join(f"{s} {per_skill[s]:.2f} (chance {chance.get(s, 0):.2f})" for s in over)
            parts.append(f"gap above chance + {GAP_OVER_CHANCE:.2f}: {listed}")
        return CheckResult("a", "student_gaps", measured, threshold, FAIL, "; ".join(parts))
    return CheckResult(
        "a", "student_gaps", measured, threshold, PASS,
        f"non-gap skills >= {measured['nongap_min']:.2f}; gap skills at most {measured['gap_over_chance_max']:+.2f} over chance",
    )


def format_student_gaps(result: Mapping[str, Any], counts: Mapping[str, int] | None = None) -> str:
    """Console lines for a check (a) result dict (:meth:`CheckResult.to_dict`): one line per skill with
    its accuracy, chance level and rows, the gaps marked, then the verdict."""
    measured = result.get("measured") or {}
    per_skill, chance = measured.get("per_skill") or {}, measured.get("chance") or {}
    gaps = set(measured.get("gap_skills") or ())
    counts = counts or {}
    width = max((len(s) for s in per_skill), default=5) + 6
    lines = [f"  {'skill':<{width}} {'accuracy':>8} {'chance':>7} {'rows':>5}"]
    for skill, acc in per_skill.items():
        name = f"{skill} (gap)" if skill in gaps else skill
        c = chance.get(skill)
        lines.append(
            f"  {name:<{width}} {acc:>8.2f} {'' if c is None else f'{c:.2f}':>7} {counts.get(skill, ''):>5}"
        )
    lines.append(f"(a) {result.get('name', 'student_gaps')}  {str(result.get('status', '')).upper()}  {result.get('explanation', '')}")
    lines.append(f"    needs: {result.get('threshold', _GAPS_THRESHOLD)}")
    return "\n".join(lines)


# --- (b), (c) -----------------------------------------------------------------------------------------


def check_base_errors(diagnose_dir: Path, rows: Mapping[str, Mapping[str, Any]], gap_skills: Collection[str]) -> CheckResult:
    """(b) The base student's target errors: well formed, several steps, mostly at a gap skill."""
    threshold = (f"well-formed >= {WELL_FORMED_MIN:.2f}, mean steps >= {MEAN_STEPS_MIN:.1f}, "
                 f"errors at a gap skill >= {GAP_ERROR_SHARE_MIN:.2f}")
    p = error_profile(diagnose_dir, rows, gap_skills)
    measured = {k: (_round(v) if isinstance(v, float) else v) for k, v in p.items()}
    measured["gap_skills"] = sorted(gap_skills)
    if not p["errors"]:
        return CheckResult("b", "base_errors", measured, threshold, NOT_MEASURED, "the base student made no error on the validation set")
    failed = []
    if p["well_formed"] < WELL_FORMED_MIN:
        failed.append(f"well-formed {p['well_formed']:.2f}")
    if p["mean_steps"] < MEAN_STEPS_MIN:
        failed.append(f"mean steps {p['mean_steps']:.3f}")
    if p["gap_share"] < GAP_ERROR_SHARE_MIN:
        others = {s: n for s, n in p["true_skills"].items() if s not in gap_skills}
        top = max(others.items(), key=lambda kv: kv[1]) if others else ("none", 0)
        failed.append(f"errors at a gap skill {p['gap_share']:.2f} (most others at {top[0]}: {top[1]} of {p['errors']})")
    line = (f"{p['errors']} errors: well-formed {p['well_formed']:.2f}, {p['mean_steps']:.3f} steps, "
            f"{p['gap_share']:.2f} at a gap skill")
    return CheckResult("b", "base_errors", measured, threshold, FAIL if failed else PASS, "too low: " + "; ".join(failed) if failed else line)


def check_located_steps(diagnose_dir: Path, rows: Mapping[str, Mapping[str, Any]]) -> CheckResult:
    """(c) Located step and named skill against the true erroneous step and its skill."""
    threshold = f"step and skill both right for >= {LOCATED_MIN:.2f} of errors"
    s = located_step_scores(diagnose_dir, rows)
    measured = {k: (_round(v) if isinstance(v, float) else v) for k, v in s.items()}
    teacher = _teacher_of(diagnose_dir)
    measured["teacher"] = teacher
    if not s["errors"]:
        return CheckResult("c", "located_steps", measured, threshold, NOT_MEASURED, "no error to locate")
    ok = s["joint_accuracy"] >= LOCATED_MIN
    line = (f"step {s['step_accuracy']:.2f}, skill {s['skill_accuracy']:.2f}, both {s['joint_accuracy']:.2f} "
            f"over {s['errors']} errors (teacher {teacher or 'unknown'})")
    return CheckResult("c", "located_steps", measured, threshold, PASS if ok else FAIL, line)


def _teacher_of(diagnose_dir: Path) -> str | None:
    try:
        cfg = json.loads((Path(diagnose_dir) / "manifest.json").read_text()).get("config", {})
    except (OSError, json.JSONDecodeError):
        return None
    teacher = cfg.get("teacher") or {}
    return teacher.get("model") if isinstance(teacher, dict) else None


# --- (d) ----------------------------------------------------------------------------------------------


def check_selection_precision(
    selections: Mapping[str, Path],
    pool_truth: Mapping[str, list[str]],
    gap_skills: Collection[str],
    task_skills: Collection[str] | None = None,
) -> CheckResult:
    """(d) Precision@budget of every error-driven selection; random selections against the pool share.

    Only the method's error-driven selections (queried by skill) are held to the bar; an ablation that
    queries by the raw erroneous step is measured and reported beside them, not judged.

    Args:
        selections: arm name -> a folder holding its ``selection.parquet``.
        pool_truth: pool id -> true skills.
        gap_skills: skills whose rows count as hits.
        task_skills: the skills the diagnosed target tasks need, when known. Tasks that need no gap skill
            (controls) have nothing to target, so their precision is measured but not judged.
    """
    threshold = f"error-driven precision >= {PRECISION_MIN:.2f}; random about the pool's gap share"
    share = gap_share(pool_truth, gap_skills)
    arms = {name: precision_at_budget(path, pool_truth, gap_skills) for name, path in sorted(selections.items())}
    for a in arms.values():
        a["precision"] = _round(a["precision"])
        a["budget_share"] = _round(a["selected"] / len(pool_truth)) if pool_truth else None
    measured: dict[str, Any] = {"pool_gap_share": _round(share), "pool_rows": len(pool_truth), "gap_skills": sorted(gap_skills), "arms": arms}
    if task_skills is not None and not set(task_skills) & set(gap_skills):
        return CheckResult("d", "selection_precision", measured, threshold, NOT_MEASURED,
                           f"the diagnosed task needs no gap skill ({', '.join(sorted(task_skills))}): a control has no gap to select for")
    driven = {n: a for n, a in arms.items() if a["strategy"] == "error_driven" and a.get("query") in (None, "skill")}
    if not driven:
        return CheckResult("d", "selection_precision", measured, threshold, NOT_MEASURED,
                           "no error-driven selection queried by skill among the arms")
    problems = [f"{n} {a['precision']:.2f}" for n, a in driven.items() if a["precision"] < PRECISION_MIN]
    for n, a in arms.items():
        if a["strategy"] == "random" and a["targeted"]:
            tol = max(0.05, RANDOM_TOLERANCE_SE * math.sqrt(share * (1 - share) / a["targeted"]))
            if abs(a["precision"] - share) > tol:
                problems.append(f"random arm {n} {a['precision']:.2f} is not about the pool share {share:.3f}")
    if problems:
        return CheckResult("d", "selection_precision", measured, threshold, FAIL, "too low or off: " + "; ".join(problems))

    def describe(name: str, a: Mapping[str, Any]) -> str:
        ablation = a["strategy"] == "error_driven" and name not in driven
        note = f", {a.get('query')} query, not judged" if ablation else ""
        return f"{name} {a['precision']:.2f} (budget {a['selected']}, {a['budget_share']:.1%} of the pool{note})"

    line = ", ".join(describe(n, a) for n, a in arms.items())
    return CheckResult("d", "selection_precision", measured, threshold, PASS, f"{line}; pool gap share {share:.3f}")


# --- (e) ----------------------------------------------------------------------------------------------


def check_headroom(
    evaluate_dir: Path | None, oracle_model: str | None, random_model: str | None, seed: int = 0, task: str | None = None
) -> CheckResult:
    """(e) Target accuracy of the oracle arm minus the random arm on the run's target task, with a paired
    bootstrap CI when the evaluate stage's predictions are there."""
    threshold = f"oracle - random target accuracy >= {HEADROOM_MIN * 100:.0f} points"
    if evaluate_dir is None or not oracle_model or not random_model:
        return CheckResult("e", "headroom", {}, threshold, NOT_MEASURED, "needs an oracle and a random arm (arms with strategy oracle and random, or --arm-oracle / --arm-random)")
    scores = _read_scores(evaluate_dir)
    oracle, rand = _overall(scores, oracle_model, "target", task=task), _overall(scores, random_model, "target", task=task)
    measured: dict[str, Any] = {"oracle_model": oracle_model, "random_model": random_model, "oracle": oracle, "random": rand}
    missing = [m for m, a in ((oracle_model, oracle), (random_model, rand)) if a is None]
    if missing:
        return CheckResult("e", "headroom", measured, threshold, NOT_MEASURED, f"no target scores of {missing} in {Path(evaluate_dir) / EVAL_SCORES}")
    diff = oracle - rand
    measured["difference"] = _round(diff)
    ci = ""
    pred_path = Path(evaluate_dir) / EVAL_PREDICTIONS
    if pred_path.is_file():
        preds = pq.read_table(pred_path, columns=["model", "suite", "task", "id", "correct"]).to_pylist()
        tasks = {p["task"] for p in preds if p["suite"] == "target"}
        keep = task if task in tasks else None
        by = {
            m: {(0, p["id"]): float(p["correct"]) for p in preds
                if p["model"] == m and p["suite"] == "target" and (keep is None or p["task"] == keep)}
            for m in (oracle_model, random_model)
        }
        shared = set(by[oracle_model]) & set(by[random_model])
        if shared:
            boot = paired_bootstrap(by[oracle_model], by[random_model], seed=seed)
            # The point estimate on the items of the interval: a random arm evaluated on several target
            # tasks has an overall score over all of them, the oracle only on the run's task.
            oracle = sum(by[oracle_model][k] for k in shared) / len(shared)
            rand = sum(by[random_model][k] for k in shared) / len(shared)
            diff = oracle - rand
            measured.update(oracle=oracle, random=rand, difference=_round(diff))
            measured["ci95"] = [_round(boot.low), _round(boot.high)]
            measured["n"] = boot.n
            ci = f", 95 % CI [{boot.low * 100:+.1f}, {boot.high * 100:+.1f}] over {boot.n} items"
    ok = diff >= HEADROOM_MIN
    line = f"oracle {oracle:.3f} vs random {rand:.3f}: {diff * 100:+.1f} points{ci}"
    return CheckResult("e", "headroom", measured, threshold, PASS if ok else FAIL, line if ok else line + "; fix the recipe before measuring the method")


# --- all of them --------------------------------------------------------------------------------------


def read_eval_rows_by_id(path: Path, task: str | None = None) -> dict[str, dict[str, Any]]:
    """Evaluation rows (``id``, ``metadata``, answer columns) of a Parquet file or folder, by id."""
    rows = pq.read_table(path).to_pylist()
    return {r["id"]: r for r in rows if task is None or r.get("source_task") == task}


def run_checks(
    out_dir: Path,
    *,
    diagnose_dir: Path,
    validation: Path,
    selections: Mapping[str, Path],
    pool: Path,
    evaluate_dir: Path,
    general: Path,
    gap_skills: Collection[str],
    task: str | None = None,
    base_model: str = "base",
    oracle_model: str | None = None,
    random_model: str | None = None,
) -> list[CheckResult]:
    """Run the five checks and write ``checks.json`` and ``checks.parquet`` into ``out_dir``.

    Args:
        out_dir: folder to write into (created).
        diagnose_dir: the base student's committed diagnose stage.
        validation: the validation rows it diagnosed (Parquet, with ``metadata.world``).
        selections: arm name -> its select stage folder.
        pool: the world's supporting pool (Parquet file or folder, with ``metadata.world``).
        evaluate_dir: the committed evaluate stage holding the base and the arms.
        general: the general-suite rows the evaluate stage scored.
        gap_skills: the student's designed gap skills.
        task: the target task (validation rows of other tasks are ignored).
        base_model: the base student's name in the evaluate stage.
        oracle_model: the oracle arm's model name (check (e)).
        random_model: the random arm's model name (check (e)).

    Returns:
        The five results, in order.
    """
    from edray.world.ground_truth import pool_skill_truth

    rows = read_eval_rows_by_id(validation, task)
    general_rows = pq.read_table(general).to_pylist()
    results = [
        check_student_gaps(evaluate_dir, general_rows, gap_skills, base_model),
        check_base_errors(diagnose_dir, rows, gap_skills),
        check_located_steps(diagnose_dir, rows),
        check_selection_precision(selections, pool_skill_truth(pool), gap_skills, _target_skills(r.get("source_task") for r in rows.values())),
        check_headroom(evaluate_dir, oracle_model, random_model, task=task),
    ]
    write_checks(results, out_dir)
    return results


def _target_skills(tasks: Iterable[str | None]) -> set[str] | None:
    """The skills the diagnosed target tasks need together; None when one is not a target task of the world."""
    from edray.world.tasks import TARGET_TASK_BY_NAME

    names = set(tasks)
    if not names or not names <= TARGET_TASK_BY_NAME.keys():
        return None
    return {skill for name in names for skill in TARGET_TASK_BY_NAME[name].skills}


def write_checks(results: Sequence[CheckResult], out_dir: Path) -> None:
    """``checks.json`` (a list of result dicts) and ``checks.parquet`` (one row per check, ``measured``
    as a JSON string) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dicts = [r.to_dict() for r in results]
    (out_dir / CHECKS_JSON).write_text(json.dumps(dicts, indent=2))
    table = pa.Table.from_pylist(
        [{**{k: d[k] for k in CHECKS_SCHEMA.names if k != "measured"}, "measured": json.dumps(d["measured"], sort_keys=True)} for d in dicts],
        schema=CHECKS_SCHEMA,
    )
    pq.write_table(table, out_dir / CHECKS_PARQUET)


def format_checks(results: Sequence[CheckResult]) -> str:
    """A short console table: one line per check (letter, name, status, explanation), then a verdict."""
    width = max(len(r.name) for r in results) if results else 4
    lines = [f"{'':2} {'check':<{width}}  {'status':<12} measured"]
    for r in results:
        lines.append(f"({r.check}) {r.name:<{width}}  {r.status.upper():<12} {r.explanation}")
        lines.append(f"    {'':<{width}}  {'':<12} needs: {r.threshold}")
    passed = sum(r.passed for r in results)
    lines.append(f"{passed} of {len(results)} checks passed" + ("" if passed == len(results) else ": experiment grids on this world should wait until they pass (docs/world.md)"))
    return "\n".join(lines)


# --- a run folder ---------------------------------------------------------------------------------------


def designed_gap_skills(student: Path | None = None, pretrain: Mapping[str, Any] | None = None) -> tuple[list[str], str]:
    """The student's designed gap skills: the skills its pretraining made uninformative (``gaps``) and
    those its mix under-weights (weight < 1).

    Args:
        student: a pretrained world student folder (its ``manifest.json`` records the pretraining config).
        pretrain: the pretraining config's ``gaps`` and ``mix``, used when the student folder records none.

    Returns:
        ``(skills, source)``: sorted skill names and where they were read from.
    """
    from edray.world.pretrain import DEFAULT_GAPS
    from edray.world.skills import SKILL_NAMES

    found, source = None, ""
    manifest = Path(student) / "manifest.json" if student else None
    if manifest is not None and manifest.is_file():
        recorded = json.loads(manifest.read_text()).get("config", {})
        if isinstance(recorded, dict) and ("gaps" in recorded or "mix" in recorded):
            found, source = recorded, f"{manifest} (pretraining config)"
    if found is None and pretrain is not None:
        found, source = pretrain, "the run config's pretraining config"
    if found is None:
        found, source = {"gaps": list(DEFAULT_GAPS)}, "the default pretraining config (the student records none)"
    gaps = set(found.get("gaps") or ())
    gaps |= {s for s, w in (found.get("mix") or {}).items() if float(w) < 1.0}
    return sorted(s for s in gaps if s in SKILL_NAMES), source


def _pretrain_gaps(pretrain: Mapping[str, Any]) -> dict[str, Any]:
    from edray.world.pretrain import DEFAULT_GAPS

    return {"gaps": list(pretrain.get("gaps", DEFAULT_GAPS)), "mix": dict(pretrain.get("mix") or {})}


def _need(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"missing {path}")
    return path


def run_dir_inputs(run_dir: Path, round_index: int = 0) -> dict[str, Any]:
    """The inputs of :func:`run_checks` for a run folder of ``edray run`` (round ``round_index``).

    Reads ``round_<k>/diagnose``, ``round_<k>/select`` and ``arms/<name>/round_<k>/select``,
    ``round_<k>/evaluate``, the world folder (``world_dir`` of ``run_config.json``, else
    ``<run>/world``) and the base student's pretraining mix (for the gap skills).

    Returns:
        Keyword arguments of :func:`run_checks` (without ``out_dir``), plus ``gap_source``.

    Raises:
        FileNotFoundError: a stage output the checks read is missing (the message names the file).
    """
    from edray.schemas import ANSWERS, ERRORS, RUN_CONFIG, SELECTION, WORLD_POOL_DIR

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"missing run folder {run_dir}")
    run_cfg_path = run_dir / RUN_CONFIG
    run_cfg = json.loads(run_cfg_path.read_text()) if run_cfg_path.is_file() else {}
    rnd = f"round_{round_index}"
    diagnose_dir = run_dir / rnd / "diagnose"
    for name in (ANSWERS, ERRORS, "manifest.json"):
        _need(diagnose_dir / name)
    diag_cfg = json.loads((diagnose_dir / "manifest.json").read_text()).get("config", {})
    validation = _need(Path(diag_cfg.get("validation") or (diagnose_dir / "validation.parquet")))
    evaluate_dir = run_dir / rnd / "evaluate"
    _need(evaluate_dir / EVAL_SCORES)
    eval_cfg = json.loads(_need(evaluate_dir / "manifest.json").read_text()).get("config", {})
    general = _need(Path(eval_cfg.get("general") or (evaluate_dir / "general.parquet")))
    world_dir = Path(run_cfg.get("world_dir") or (run_dir / "world"))
    pool = _need(world_dir / WORLD_POOL_DIR)
    arms = run_cfg.get("arms") or []
    main = arms[0]["name"] if arms else "main"
    selections = {main: _need(run_dir / rnd / "select" / SELECTION).parent}
    for sel in sorted((run_dir / "arms").glob(f"*/{rnd}/select/{SELECTION}")):
        selections[sel.parents[2].name] = sel.parent
    base = eval_cfg.get("base") or {}
    gap_skills, gap_source = designed_gap_skills(
        Path(base["path"]) if base.get("path") else None, _pretrain_gaps(run_cfg.get("pretrain") or {}) if not run_cfg.get("student") else None
    )
    return {
        "diagnose_dir": diagnose_dir,
        "validation": validation,
        "selections": selections,
        "pool": pool,
        "evaluate_dir": evaluate_dir,
        "general": general,
        "gap_skills": gap_skills,
        "gap_source": gap_source,
        "task": diag_cfg.get("task"),
        "base_model": base.get("name", "base"),
    }
