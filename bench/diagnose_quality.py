"""Quality of diagnose and select on the skills world, against the world's ground truth.

What it measures (numbers go to docs/diagnose.md):
1. Step location: each validation question's reference steps are corrupted at a known step (a false
   claim about the scene, same skill), its final answer replaced by a wrong one, and the result is
   answered by a *replay student* that returns exactly that text. ``edray diagnose`` runs end to end
   (rollout, scoring, locating, skill analysis, gaps) with the world teacher; the located step is
   compared with ``true_error_step`` for the answer switch, a random step, and asking the teacher per step.
2. Skill analysis: the named skill phrase mapped back to a world skill, against ``true_error_skill``.
3. Faults: the same run with the teacher failing 20% of requests (503) and replying malformed text 10% of
   the time; the run must complete and every request that failed after the client's retries must appear in
   ``errors.failure``.
4. Re-runs: an unchanged diagnose or select re-run makes no model call (stage skip).
5. Selection precision: a world pool is indexed (``edray index``), ``edray select`` retrieves for the gaps
   of one target task; precision is the share of selected samples whose true skills include the true
   skill of the errors of their gap (random: of any diagnosed error), for BM25, dense, hybrid and random.

Run::

    python bench/diagnose_quality.py --out runs/bench-diagnose --n-per-task 40 --pool 3000 --budget 300

The replay student stands in for a trained student so that the true erroneous step is known; with a
real student (``edray diagnose --set student.client.model=...``) the same metrics come from
``true_error_step`` on its own replies.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from edray.diagnose import job as diagnose_job
from edray.diagnose.config import DiagnoseConfig
from edray.diagnose.inprocess import EngineClient
from edray.serve.engine import ChatRequest, ChatResult, EngineError
from edray.world.config import TeacherConfig, TeacherNoise
from edray.world.ground_truth import located_step_scores, selection_precision
from edray.world.pool import generate_eval_rows, generate_support_rows, true_error_skill, world_metadata
from edray.world.replay import ReplayStudent, planted_replies
from edray.world.tasks import target_task_names
from edray.world.teacher import WorldTeacher


# --- faults ------------------------------------------------------------------------------------------


class CountingEngine:
    """Counts the 503s an engine raises (to check that every fault is accounted for); with
    ``transient`` > 0 it also fails that share of attempts itself, independently per attempt (as an
    overloaded server does), whereas the world teacher's own faults are fixed per request."""

    def __init__(self, engine: Any, transient: float = 0.0, seed: int = 0) -> None:
        self.engine = engine
        self.faults = 0
        self.transient = transient
        self.rng = random.Random(seed)

    def model_ids(self) -> list[str]:
        return self.engine.model_ids()

    async def generate(self, request: ChatRequest) -> ChatResult:
        if self.rng.random() < self.transient:
            self.faults += 1
            raise EngineError("overloaded", 503)
        try:
            return await self.engine.generate(request)
        except EngineError as exc:
            if exc.status == 503:
                self.faults += 1
            raise

    async def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        yield (await self.generate(request)).text


# --- the measurements ---------------------------------------------------------------------------------


def build_world(out: Path, tasks: list[str], n_per_task: int, seed: int) -> tuple[Path, Path, dict[str, str], dict[str, int]]:
    """Validation and test splits of the tasks, and the corrupted replies of the validation rows."""
    out.mkdir(parents=True, exist_ok=True)
    val = pa.concat_tables([generate_eval_rows(t, "validation", n_per_task, seed) for t in tasks])
    test = pa.concat_tables([generate_eval_rows(t, "test", n_per_task, seed) for t in tasks])
    replies, planted = planted_replies(val.to_pylist(), seed)
    keep = [i for i, r in enumerate(val.column("id").to_pylist()) if r in planted]
    val = val.take(keep)
    val_path, test_path = out / "validation.parquet", out / "test.parquet"
    pq.write_table(val, val_path)
    pq.write_table(test, test_path)
    return val_path, test_path, replies, planted


def run_diagnose(run_dir: Path, val_path: Path, replies: dict[str, str], method: str, teacher: Any = None,
                 task: str | None = None, **overrides: Any) -> tuple[Path, Any, Any]:
    cfg = DiagnoseConfig.model_validate(
        # The fault runs measure recovery and accounting, so no failure budget stops them.
        {"validation": str(val_path), "task": task, "student": {"family": "plain"}, "locate": {"method": method},
         "max_failure_share": 1.0, **overrides}
    )
    student = EngineClient(ReplayStudent(replies), "student")
    teacher = teacher or EngineClient(WorldTeacher(TeacherConfig(model_id="teacher")), "teacher")
    path = diagnose_job.run(cfg, run_dir, student=student, teacher=teacher)
    return path, student, teacher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench-diagnose"))
    ap.add_argument("--n-per-task", type=int, default=40)
    ap.add_argument("--pool", type=int, default=3000)
    ap.add_argument("--budget", type=int, default=300)
    ap.add_argument("--select-task", default="locate_item")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip-select", action="store_true")
    args = ap.parse_args()
    out: Path = args.out
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}

    tasks = target_task_names()
    val_path, test_path, replies, planted = build_world(out / "world", tasks, args.n_per_task, args.seed)
    rows = {r["id"]: r for r in pq.read_table(val_path).to_pylist()}
    report["questions"] = len(rows)

    # 1-2. step location and skill analysis, three locators.
    for method in ("answer_switch", "random", "ask_per_step"):
        t0 = time.time()
        stage, _, teacher = run_diagnose(out / f"locate-{method}", val_path, replies, method)
        report[f"locate_{method}"] = {**located_step_scores(stage, rows), "teacher_requests": teacher.stats.requests,
                                      "wall_s": round(time.time() - t0, 1)}
        print(method, report[f"locate_{method}"], flush=True)

    # 3. faults: 20% 503s, 10% malformed replies; one retry so that some requests exhaust it.
    noisy = CountingEngine(WorldTeacher(TeacherConfig(model_id="teacher", noise=TeacherNoise(failed=0.2, malformed=0.1))))
    teacher = EngineClient(noisy, "teacher", max_retries=1)
    stage, _, teacher = run_diagnose(out / "faults", val_path, replies, "answer_switch", teacher=teacher)
    errors = pq.read_table(stage / "errors.parquet").to_pylist()
    recorded_503 = sum((e["failure"] or "").count("HTTP 503") for e in errors)
    report["faults"] = {
        **located_step_scores(stage, rows),
        "injected_503": noisy.faults,
        "client_retries": teacher.stats.retries,
        "client_failures": teacher.stats.failures,
        "failures_recorded_in_errors": recorded_503,
        "every_fault_accounted": noisy.faults == teacher.stats.retries + teacher.stats.failures
        and recorded_503 == teacher.stats.failures,
    }
    print("faults", report["faults"], flush=True)

    # 3b. transient faults (20% of attempts, independent per attempt): the client's retries recover them.
    flaky = CountingEngine(WorldTeacher(TeacherConfig(model_id="teacher")), transient=0.2, seed=args.seed)
    teacher = EngineClient(flaky, "teacher", max_retries=4)
    stage, _, teacher = run_diagnose(out / "transient-faults", val_path, replies, "answer_switch", teacher=teacher)
    errors = pq.read_table(stage / "errors.parquet").to_pylist()
    report["transient_faults"] = {
        **located_step_scores(stage, rows),
        "injected_503": flaky.faults,
        "client_retries": teacher.stats.retries,
        "client_failures": teacher.stats.failures,
        "failures_recorded_in_errors": sum((e["failure"] or "").count("HTTP 503") for e in errors),
    }
    print("transient faults", report["transient_faults"], flush=True)

    # 3c. an imperfect teacher: its belief shift lands on a neighbouring step 20% of the time, and it
    # names a wrong skill 20% of the time.
    imperfect = EngineClient(
        WorldTeacher(TeacherConfig(model_id="teacher", noise=TeacherNoise(wrong_step=0.2, wrong_skill=0.2))), "teacher"
    )
    for method in ("answer_switch", "ask_per_step", "random"):
        stage, _, _ = run_diagnose(out / f"imperfect-{method}", val_path, replies, method, teacher=imperfect)
        report[f"imperfect_{method}"] = located_step_scores(stage, rows)
        print("imperfect", method, report[f"imperfect_{method}"], flush=True)

    # 4. re-run unchanged: the stage is skipped, no request is made.
    _, student, teacher = run_diagnose(out / "locate-answer_switch", val_path, replies, "answer_switch")
    report["rerun_diagnose_requests"] = student.stats.requests + teacher.stats.requests
    print("re-run diagnose requests:", report["rerun_diagnose_requests"], flush=True)

    if not args.skip_select:
        report["select"] = bench_select(out, args, val_path, test_path, replies, rows)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def bench_select(out: Path, args: argparse.Namespace, val_path: Path, test_path: Path,
                 replies: dict[str, str], rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    import ray

    from edray.index import job as index_job
    from edray.index.config import IndexConfig
    from edray.select import job as select_job
    from edray.select.config import SelectConfig

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    run = out / "select-run"
    pool_dir = out / "pool"
    pool_dir.mkdir(parents=True, exist_ok=True)
    pool = generate_support_rows(args.seed, 0, args.pool)
    pq.write_table(pool, pool_dir / "part-00000.parquet")
    pool_truth = {r["id"]: world_metadata(r)["skills"] for r in pool.select(["id", "metadata"]).to_pylist()}
    t0 = time.time()
    index_job.run(IndexConfig.model_validate({"pool": str(pool_dir), "progress_bars": False}), run)
    result: dict[str, Any] = {"pool": args.pool, "budget": args.budget, "index_wall_s": round(time.time() - t0, 1)}

    stage, _, _ = run_diagnose(run, val_path, replies, "answer_switch", task=args.select_task)
    errors = pq.read_table(stage / "errors.parquet").to_pylist()
    gap_truth: dict[int, set[str]] = {}
    for e in errors:
        skill = true_error_skill(rows[e["id"]], e["steps"])
        if e["gap_id"] is not None and skill:
            gap_truth.setdefault(e["gap_id"], set()).add(skill)
    all_truth = set().union(*gap_truth.values()) if gap_truth else set()
    result["task"] = args.select_task
    result["true_gap_skills"] = sorted(all_truth)
    result["gaps"] = pq.read_table(stage / "gaps.parquet").select(["gap_id", "skill", "error_count"]).to_pylist()
    result["pool_share_of_gap_skills"] = sum(bool(set(s) & all_truth) for s in pool_truth.values()) / len(pool_truth)
    for name, overrides in (("bm25", {"mode": "bm25"}), ("dense", {"mode": "dense"}), ("hybrid", {"mode": "hybrid"}),
                            ("random", {"strategy": "random"})):
        cfg = SelectConfig.model_validate(
            {"budget": args.budget, "contamination": {"evaluation": [str(test_path)]}, **overrides}
        )
        sub = out / f"select-{name}"
        sub.mkdir(exist_ok=True)
        for link in ("index", "lancedb", "round_0"):
            target = sub / link
            if not target.exists():
                target.symlink_to((run / link).resolve())
        select_run = sub
        t0 = time.time()
        path = select_job.run(cfg.model_copy(update={"index_dir": str(run / "index"),
                                                      "diagnose_dir": str(stage)}), select_run / "out")
        manifest = json.loads((path / "manifest.json").read_text())
        result[name] = {**selection_precision(path, pool_truth, gap_truth, all_truth),
                        "contaminated_excluded": manifest["counts"].get("contaminated_excluded"),
                        "wall_s": round(time.time() - t0, 1)}
        print("select", name, result[name], flush=True)
        # Re-run unchanged: skipped (the manifest is not rewritten).
        before = manifest["finished_at"]
        select_job.run(cfg.model_copy(update={"index_dir": str(run / "index"), "diagnose_dir": str(stage)}),
                       select_run / "out")
        result[name]["rerun_skipped"] = json.loads((path / "manifest.json").read_text())["finished_at"] == before
    return result


if __name__ == "__main__":
    main()
