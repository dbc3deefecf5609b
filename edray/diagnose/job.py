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

Nothing the teacher returns can stop the stage: a request that still fails after the client's retries, or
a reply that cannot be read, is recorded in the error's ``failure`` column and the run goes on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from edray.aio import run_sync
from edray.diagnose import core, locate
from edray.diagnose.config import DiagnoseConfig
from edray.diagnose.scoring import score_answer
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


# --- talking to models -------------------------------------------------------------------------------


@dataclass
class Reply:
    """One model reply, or why there is none."""

    text: str | None
    tokens: list[tuple[str, float, list[tuple[str, float]]]] = field(default_factory=list)
    failure: str | None = None


def _payload(
    model: str,
    text: str,
    images: Sequence[bytes],
    max_tokens: int,
    logprobs: int = 0,
    seed: int | None = None,
    system: str = "",
) -> dict[str, Any]:
    """Keyword arguments of one :meth:`ModelClient.chat` call (images inline, before the text)."""
    from edray.serve.core import user_message

    messages = [{"role": "system", "content": system}] if system else []
    messages.append(user_message(core.strip_images(text), list(images)))
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }
    if logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = logprobs
    if seed is not None:
        body["seed"] = seed
    return body


def _to_reply(result: Any) -> Reply:
    """Normalize a client :class:`Result` or :class:`Failure` into a :class:`Reply`."""
    from edray.serve.client import Failure

    if isinstance(result, Failure):
        status = f", status {result.status}" if result.status is not None else ""
        return Reply(None, failure=f"{result.reason} (after {result.attempts} attempts{status})")
    tokens = [(t.token, t.logprob, [(a, v) for a, v in t.top]) for t in result.logprobs or []]
    return Reply(result.text, tokens)


async def _ask(client: Any, payloads: list[dict[str, Any]]) -> list[Reply]:
    if not payloads:
        return []
    results = await client.achat_many(payloads, progress=False)
    return [_to_reply(r) for r in results]


def _client_config(cfg: ClientConfig, run_dir: Path, use_cache: bool) -> ClientConfig:
    if use_cache and cfg.cache_dir is None:
        return cfg.model_copy(update={"cache_dir": str(run_dir / "cache")})
    return cfg


# --- the three steps ----------------------------------------------------------------------------------


async def rollout(client: Any, rows: list[dict[str, Any]], config: DiagnoseConfig) -> list[dict[str, Any]]:
    """Step 1: the student answers every row with numbered steps; answers are parsed and scored."""
    template = config.student.templates[config.student.family]
    payloads = []
    for r in rows:
        prompt = core.render_student_prompt(template, core.question_text(r["messages"]), r.get("choices"))
        payloads.append(_payload(config.student.client.model, prompt, r["images"] or [], config.student.max_tokens))
    replies = await _ask(client, payloads)
    out = []
    for r, reply in zip(rows, replies):
        steps, prediction = core.parse_steps(reply.text)
        score = score_answer(
            prediction,
            r["answer"],
            r["answer_type"],
            r.get("choices"),
            config.scoring.scorer_by_type,
            abs_tol=config.scoring.abs_tol,
            rel_tol=config.scoring.rel_tol,
        )
        out.append(
            {
                "id": str(r["id"]),
                "source_task": r["source_task"],
                "question": core.question_text(r["messages"]),
                "gold": str(r["answer"]),
                "answer_type": r["answer_type"],
                "choices": r.get("choices"),
                "model": config.student.client.model,
                "response": reply.text,
                "steps": steps,
                "prediction": prediction,
                "score": float(score),
                "correct": reply.failure is None and score >= config.scoring.correct_threshold,
                "failure": reply.failure,
            }
        )
    return out


@dataclass
class ErrorCase:
    """A wrong answer being diagnosed."""

    row: dict[str, Any]
    answer: dict[str, Any]
    options: locate.Options | None = None
    located: locate.Located | None = None
    margins: list[float] | None = None
    skill: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def steps(self) -> list[str]:
        return list(self.answer["steps"])


async def _ask_until_readable(
    teacher: Any, payloads: list[dict[str, Any]], readers: Sequence[Any], retries: int
) -> list[tuple[Reply, Any]]:
    """Ask; re-ask every reply its reader cannot parse, up to ``retries`` times, with another seed so that
    neither the response cache nor a deterministic server repeats the same unreadable reply.

    Returns:
        ``(last reply, parsed value or None)`` per payload.
    """
    replies = await _ask(teacher, payloads)
    parsed = [readers[i](r) if r.failure is None else None for i, r in enumerate(replies)]
    for attempt in range(1, retries + 1):
        again = [i for i, (r, p) in enumerate(zip(replies, parsed)) if p is None and r.failure is None]
        if not again:
            break
        new = await _ask(teacher, [{**payloads[i], "seed": attempt} for i in again])
        for i, r in zip(again, new):
            replies[i], parsed[i] = r, (readers[i](r) if r.failure is None else None)
    return list(zip(replies, parsed))


async def locate_errors(teacher: Any, cases: list[ErrorCase], config: DiagnoseConfig) -> None:
    """Step 2: the first erroneous step of every wrong answer, by the configured locator."""
    lc = config.locate
    for case in cases:
        try:
            case.options = locate.build_options(
                case.row["answer"], case.answer["prediction"], case.row["answer_type"], case.row.get("choices"),
                key=case.answer["id"], seed=lc.seed,
            )
        except ValueError as exc:
            case.failures.append(f"options: {exc}")
    if lc.method == "random":
        for case in cases:
            case.located = locate.locate_random(len(case.steps), case.answer["id"], lc.seed)
        return
    if lc.method == "ask_per_step":
        await _locate_per_step(teacher, cases, config)
        return
    jobs: list[tuple[int, int]] = []
    payloads: list[dict[str, Any]] = []
    for ci, case in enumerate(cases):
        if case.options is None or not case.steps:
            continue
        for n in range(len(case.steps) + 1):
            text = core.render_locate_prompt(
                lc.template, _teacher_question(case), case.options, case.steps[:n], lc.prior_strength, lc.prior_template
            )
            jobs.append((ci, n))
            payloads.append(_teacher_payload(config, text, case.row, lc.max_tokens, lc.top_logprobs, lc.system))
    letters_of = [c.options.letters if c.options else () for c in cases]
    readers = [lambda r, letters=letters_of[ci]: locate.option_probs(r.tokens, letters) for ci, _ in jobs]
    results = await _ask_until_readable(teacher, payloads, readers, config.malformed_retries)
    per_case: dict[int, dict[int, tuple[Reply, Any]]] = {}
    for (ci, n), res in zip(jobs, results):
        per_case.setdefault(ci, {})[n] = res
    for ci, case in enumerate(cases):
        if case.options is None:
            case.located = locate.Located(None, "failed")
            continue
        if not case.steps:
            case.located = locate.Located(None, locate.NO_STEPS)
            continue
        got = per_case.get(ci, {})
        case.raw["locate"] = [got[n][0].text for n in sorted(got)]
        probs = []
        for n in sorted(got):
            reply, p = got[n]
            if p is None:
                case.failures.append(
                    f"locate prefix {n}: " + (reply.failure or f"no option letter in reply {str(reply.text)[:80]!r}")
                )
            probs.append(p)
        if any(p is None for p in probs):
            case.located = locate.Located(None, "failed")
            continue
        case.margins = locate.switch_margins(probs, case.options)
        case.located = locate.locate_answer_switch(
            case.margins, lc.delta, lc.consecutive, fallback=lc.fallback, run_may_end=lc.run_may_end
        )


async def _locate_per_step(teacher: Any, cases: list[ErrorCase], config: DiagnoseConfig) -> None:
    lc = config.locate
    jobs, payloads = [], []
    for ci, case in enumerate(cases):
        for n in range(1, len(case.steps) + 1):
            text = core.render_verdict_prompt(lc.verdict_template, _teacher_question(case), _gold_text(case), case.steps[:n])
            jobs.append((ci, n))
            payloads.append(_teacher_payload(config, text, case.row, lc.verdict_max_tokens, 0, lc.verdict_system))
    readers = [lambda r: locate.parse_verdict(r.text)] * len(payloads)
    results = await _ask_until_readable(teacher, payloads, readers, config.malformed_retries)
    verdicts: dict[int, dict[int, bool | None]] = {}
    for (ci, n), (reply, v) in zip(jobs, results):
        if v is None:
            cases[ci].failures.append(f"verdict step {n}: " + (reply.failure or f"unreadable {str(reply.text)[:80]!r}"))
        verdicts.setdefault(ci, {})[n] = v
        cases[ci].raw.setdefault("verdicts", []).append(reply.text)
    for ci, case in enumerate(cases):
        vs = verdicts.get(ci, {})
        case.located = locate.locate_first_rejected([vs[n] for n in sorted(vs)])


def _gold_text(case: ErrorCase) -> str:
    """The gold answer in words (the option text for multiple choice)."""
    if case.options is not None and not case.options.open_ended:
        return case.options.texts[case.options.gold]
    return str(case.row["answer"])


def _teacher_question(case: ErrorCase) -> str:
    """The question as the teacher reads it: the user turns without image placeholders."""
    return core.strip_images(core.question_text(case.row["messages"]))


def _teacher_payload(
    config: DiagnoseConfig, text: str, row: dict[str, Any], max_tokens: int, top: int, system: str,
    with_images: bool | None = None,
) -> dict[str, Any]:
    send = config.teacher_sees_images if with_images is None else with_images
    images = (row["images"] or []) if send else []
    return _payload(config.teacher.model, text, images, max_tokens, logprobs=top, system=system)


async def analyze_skills(teacher: Any, cases: list[ErrorCase], config: DiagnoseConfig) -> None:
    """Step 3: one missing-skill phrase per located error (few-shot prompt)."""
    sc = config.skill
    todo = [c for c in cases if c.located is not None and c.located.step is not None]
    payloads = []
    for case in todo:
        system, text = core.render_skill_prompt(
            sc.system, sc.template, sc.example_template, sc.examples, _teacher_question(case),
            _gold_text(case), case.steps[case.located.step - 1],
        )
        payloads.append(_teacher_payload(config, text, case.row, sc.max_tokens, 0, system, with_images=sc.with_images))
    readers = [lambda r: core.parse_skill(r.text, sc.max_words, sc.reject)] * len(payloads)
    results = await _ask_until_readable(teacher, payloads, readers, config.malformed_retries)
    for case, (reply, skill) in zip(todo, results):
        case.raw["skill"] = reply.text
        case.skill = skill
        if skill is None:
            case.failures.append("skill: " + (reply.failure or f"no skill phrase in reply {str(reply.text)[:80]!r}"))


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
                "wall_s": round(time.time() - started, 3),
                "student_calls": _stats(student),
                "teacher_calls": _stats(teacher),
            }
        )

    return run_stage(st, compute, force=force)



def _stats(client: Any) -> dict[str, int]:
    """Request accounting of a client (requests made, cache hits, retries, failures), if it keeps any."""
    stats = getattr(client, "stats", None)
    return stats.as_dict() if stats is not None and hasattr(stats, "as_dict") else {}
