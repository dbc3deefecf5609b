"""The diagnose stage: the student's mistakes on the validation set, located and named (docs/method.md §1 steps 1–3).

Inputs:
    - the target task's validation set (Parquet, ``EVAL_SCHEMA``), ``config.validation``;
    - the student and the teacher behind OpenAI-compatible endpoints (``config.student.client``,
      ``config.teacher``), reached through :class:`edray.serve.client.ModelClient` (retries, cache).
Outputs, in ``runs/<run>/round_<k>/diagnose/``:
    - ``answers.parquet`` (``ANSWERS_SCHEMA``): every validation answer, parsed into steps and scored;
    - ``errors.parquet`` (``ERRORS_SCHEMA``): every wrong answer with its located step, the method that
      located it, the missing skill, the teacher's raw replies and any failure;
    - ``gaps.parquet`` (``GAPS_SCHEMA``): missing skills clustered into capability gaps;
    - ``manifest.json`` and ``_SUCCESS`` (the stage contract of :mod:`edray.rundir`).

Run it with::

    edray diagnose --config jobs/diagnose.yaml --run-dir runs/x [--set locate.delta=0.1] [--force]

A request that still fails after the client's retries, or a reply that cannot be read, is recorded in the
error's ``failure`` column. When more than ``max_failure_share`` of the answers or errors fail, the stage
stops with :class:`~edray.budget.FailureBudgetExceeded` (the share, the commonest reasons, what to
change); the replies that worked stay in the response cache, so a re-run pays only for the rest.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from edray.aio import run_sync
from edray.diagnose import core, locate
from edray.diagnose.config import DiagnoseConfig
from edray.diagnose.queries import ErrorCase, analyze_skills, locate_errors, rollout
from edray.data.parquet_rows import read_eval_rows
from edray.rundir import Stage, StageDir, run_stage
from edray.schemas import ANSWERS, ANSWERS_SCHEMA, ERRORS, ERRORS_SCHEMA, GAPS, GAPS_SCHEMA
from edray.serve.config import ClientConfig

log = logging.getLogger(__name__)

STAGE = "diagnose"


# --- reading ---------------------------------------------------------------------------------------


def read_validation(path: str, task: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Validation rows as dicts, in a stable order (by id); see :func:`edray.data.parquet_rows.read_eval_rows`."""
    return read_eval_rows(path, "validation set", task=task, limit=limit)


# --- clients ---------------------------------------------------------------------------------------


def _client_config(cfg: ClientConfig, run_dir: Path, use_cache: bool) -> ClientConfig:
    if use_cache and cfg.cache_dir is None:
        return cfg.model_copy(update={"cache_dir": str(run_dir / "cache")})
    return cfg


# --- capability gaps and outputs ----------------------------------------------------------------------


def find_gaps(cases: list[ErrorCase], config: DiagnoseConfig, error_id: Any) -> list[core.Gap]:
    """Embed the missing-skill phrases with the index's embedder and cluster them into gaps."""
    named = [c for c in cases if c.skill]
    if not named:
        return []
    from edray.index.search import load_embedder

    embed = load_embedder(config.gaps.embedder)
    phrases = [c.skill for c in named]
    vectors = np.concatenate(
        [embed(phrases[i : i + config.gaps.batch_size]) for i in range(0, len(phrases), config.gaps.batch_size)]
    )
    labels = core.cluster_skills(vectors, config.gaps.threshold, config.gaps.linkage)
    gaps = core.build_gaps([error_id(c) for c in named], phrases, vectors, labels)
    for c, label in zip(named, labels.tolist()):
        c.raw["gap_id"] = int(label)
    return gaps


def error_rows(cases: list[ErrorCase], round_index: int, error_id: Any) -> pa.Table:
    """``errors.parquet`` rows."""
    rows = []
    for c in cases:
        located = c.located or locate.Located(None, "failed")
        step_text = c.steps[located.step - 1] if located.step else None
        rows.append(
            {
                "error_id": error_id(c),
                "id": c.answer["id"],
                "round": round_index,
                "source_task": c.answer["source_task"],
                "question": c.answer["question"],
                "gold": c.answer["gold"],
                "prediction": c.answer["prediction"],
                "answer_type": c.answer["answer_type"],
                "options": list(c.options.texts) if c.options else None,
                "steps": c.steps,
                "step": located.step,
                "step_text": step_text,
                "method": located.method,
                "margins": c.margins,
                "prob_path": c.prob_path,
                "skill": c.skill,
                "gap_id": c.raw.get("gap_id"),
                "teacher_raw": json.dumps({k: v for k, v in c.raw.items() if k != "gap_id"}, ensure_ascii=False),
                "failure": "; ".join(c.failures) if c.failures else None,
            }
        )
    return pa.Table.from_pylist(rows, schema=ERRORS_SCHEMA)


def gap_rows(gaps: list[core.Gap], cases: list[ErrorCase], max_examples: int, error_id: Any) -> pa.Table:
    """``gaps.parquet`` rows: each gap with its phrases, error count, error ids and example steps."""
    by_id = {error_id(c): c for c in cases}
    rows = []
    for g in gaps:
        examples = []
        for eid in g.error_ids[:max_examples]:
            c = by_id[eid]
            if c.located and c.located.step:
                examples.append(c.steps[c.located.step - 1])
        rows.append(
            {
                "gap_id": g.gap_id,
                "skill": g.skill,
                "phrases": g.phrases,
                "error_count": g.error_count,
                "error_ids": g.error_ids,
                "example_steps": examples,
            }
        )
    return pa.Table.from_pylist(rows, schema=GAPS_SCHEMA)


async def diagnose(
    student: Any, teacher: Any, rows: list[dict[str, Any]], config: DiagnoseConfig
) -> tuple[list[dict[str, Any]], list[ErrorCase]]:
    """Steps 1–3 over ``rows`` with the given clients: answers, and the diagnosed wrong answers."""
    answers = await rollout(student, rows, config)
    by_id = {str(r["id"]): r for r in rows}
    cases = [ErrorCase(by_id[a["id"]], a) for a in answers if not a["correct"] and a["failure"] is None]
    await locate_errors(teacher, cases, config)
    await analyze_skills(teacher, cases, config)
    return answers, cases


def stage(config: DiagnoseConfig, run_dir: str | Path) -> Stage:
    """The diagnose stage's identity: ``round_<k>/diagnose``, keyed by the config and the validation set."""
    return Stage(StageDir(Path(run_dir), STAGE, config.round), config, inputs=[config.validation])


def run(config: DiagnoseConfig, run_dir: str | Path, force: bool = False, student: Any = None, teacher: Any = None) -> Path:
    """Run the diagnose stage (skipped when a completed output has the same config and inputs).

    Args:
        config: the validated stage config.
        run_dir: the run directory; output goes to ``round_<k>/diagnose``.
        force: re-run even when a completed output matches.
        student: a client with ``achat_many`` to use instead of one built from ``config.student.client``.
        teacher: likewise for the teacher.

    Returns:
        The stage folder.

    Raises:
        FileNotFoundError, ValueError: the validation set is missing or unusable.
    """
    from edray.serve.client import ModelClient

    run_dir = Path(run_dir)
    st = stage(config, run_dir)

    def compute(tmp: Path) -> None:
        nonlocal student, teacher
        rows = read_validation(config.validation, config.task, config.limit)
        started = time.time()
        student = student or ModelClient(_client_config(config.student.client, run_dir, config.cache))
        teacher = teacher or ModelClient(_client_config(config.teacher, run_dir, config.cache))

        def error_id(c: ErrorCase) -> str:
            return f"r{config.round}:{c.answer['id']}"

        answers, cases = run_sync(diagnose(student, teacher, rows, config))
        failed = [a for a in answers if a["failure"] is not None]
        if answers and len(failed) == len(answers):
            # Not a bad record but a broken setup (wrong endpoint, key, model name or token budget): committing
            # a diagnosis without a single answer would hand select an empty error set.
            raise RuntimeError(f"diagnose: every student call failed; first failure: {failed[0]['failure']}")
        check_budget(answers, cases, config)
        gaps = find_gaps(cases, config, error_id)
        pq.write_table(pa.Table.from_pylist(answers, schema=ANSWERS_SCHEMA), tmp / ANSWERS)
        pq.write_table(error_rows(cases, config.round, error_id), tmp / ERRORS)
        pq.write_table(gap_rows(gaps, cases, config.gaps.max_examples, error_id), tmp / GAPS)
        methods: dict[str, int] = {}
        for c in cases:
            m = c.located.method if c.located else "failed"
            methods[m] = methods.get(m, 0) + 1
        st.dir.counts.update(
            {
                "answers": len(answers),
                "correct": sum(a["correct"] for a in answers),
                "student_failures": sum(a["failure"] is not None for a in answers),
                "errors": len(cases),
                "errors_with_failures": sum(bool(c.failures) for c in cases),
                "skills": sum(c.skill is not None for c in cases),
                "gaps": len(gaps),
            }
        )
        st.dir.metrics.update(
            {
                "accuracy": (sum(a["correct"] for a in answers) / len(answers)) if answers else 0.0,
                "methods": methods,
                "prob_paths": _tally(c.prob_path for c in cases if c.prob_path),
                "wall_s": round(time.time() - started, 3),
                "student_calls": _stats(student),
                "teacher_calls": _stats(teacher),
            }
        )

    return run_stage(st, compute, force=force)



def check_budget(answers: list[dict[str, Any]], cases: list[ErrorCase], config: DiagnoseConfig) -> None:
    """Stop when too many student answers, or too many errors' teacher calls, failed or were unusable.

    Raises:
        FailureBudgetExceeded: over ``config.max_failure_share``; the replies that worked stay in the
            response cache, so a re-run pays only for the rest.
    """
    from edray.budget import check_failure_budget

    share = config.max_failure_share
    check_failure_budget(
        STAGE, "student answers", len(answers), [(a["id"], a["failure"]) for a in answers if a["failure"]], share,
        "check student.client (base_url, model, api key, timeout_s) and student.max_tokens; "
        "raise max_failure_share to accept more failures (1 never stops).",
    )
    check_failure_budget(
        STAGE, "errors (teacher calls)", len(cases), [(c.answer["id"], "; ".join(c.failures)) for c in cases if c.failures],
        share,
        "check teacher (base_url, model, api key, timeout_s); if replies carry no option probabilities, serve the "
        "teacher with vLLM and set locate.probabilities to choice or likelihood; if skill replies are unusable, set "
        "skill.structured=json_schema on an endpoint that enforces JSON schemas or rewrite skill.template; raise "
        "malformed_retries, or max_failure_share to accept more failures (1 never stops).",
    )


def _tally(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _stats(client: Any) -> dict[str, int]:
    """Request accounting of a client (requests made, cache hits, retries, failures), if it keeps any."""
    stats = getattr(client, "stats", None)
    return stats.as_dict() if stats is not None and hasattr(stats, "as_dict") else {}
