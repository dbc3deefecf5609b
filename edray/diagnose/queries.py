"""The requests the diagnose stage sends and how their replies are read (docs/method.md §1 steps 1–3).

The student's rollout, the teacher's option probabilities after each step prefix (by constrained choice,
option likelihood or a free reply's top_logprobs: :func:`probability_path`), the ask-per-step verdicts,
and the skill analysis. Every call goes through a client with ``achat_many`` (a
:class:`~edray.serve.client.ModelClient`, over HTTP or an engine in process); replies a reader cannot use
are re-asked (:func:`_ask_until_readable`) and recorded as failures of their error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edray.diagnose import core, locate, prompts
from edray.diagnose.config import DiagnoseConfig
from edray.diagnose.scoring import score_answer

# Re-asks of an unreadable reply are sampled: a greedy model would repeat itself.
REASK_TEMPERATURE = 0.7


@dataclass
class Reply:
    """One model reply, or why there is none."""

    text: str | None
    tokens: list[tuple[str, float, list[tuple[str, float]]]] = field(default_factory=list)
    failure: str | None = None
    prompt_logprobs: list[tuple[str, float | None]] = field(default_factory=list)


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
    return Reply(result.text, tokens, prompt_logprobs=list(getattr(result, "prompt_logprobs", None) or []))


async def _ask(client: Any, payloads: list[dict[str, Any]]) -> list[Reply]:
    if not payloads:
        return []
    results = await client.achat_many(payloads, progress=False)
    return [_to_reply(r) for r in results]


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
    prob_path: str | None = None
    skill: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def steps(self) -> list[str]:
        return list(self.answer["steps"])


async def _ask_until_readable(
    teacher: Any, payloads: list[dict[str, Any]], readers: Sequence[Any], retries: int
) -> list[tuple[Reply, Any]]:
    """Ask; re-ask every reply its reader cannot parse, up to ``retries`` times, sampled (temperature
    :data:`REASK_TEMPERATURE`) with another seed, so that neither the response cache nor a greedy model
    repeats the same unreadable reply. Replies still unusable at the end are dropped from the response
    cache, so that a re-run asks again.

    Returns:
        ``(last reply, parsed value or None)`` per payload.
    """
    replies = await _ask(teacher, payloads)
    parsed = [readers[i](r) if r.failure is None else None for i, r in enumerate(replies)]
    asked = [[p] for p in payloads]
    for attempt in range(1, retries + 1):
        again = [i for i, (r, p) in enumerate(zip(replies, parsed)) if p is None and r.failure is None]
        if not again:
            break
        for i in again:
            asked[i].append({**payloads[i], "seed": attempt, "temperature": REASK_TEMPERATURE})
        new = await _ask(teacher, [asked[i][-1] for i in again])
        for i, r in zip(again, new):
            replies[i], parsed[i] = r, (readers[i](r) if r.failure is None else None)
    forget = getattr(teacher, "forget", None)
    if forget is not None:
        # A reply re-asked into shape stays cached with its re-ask (a re-run replays both for free).
        for i, p in enumerate(parsed):
            if p is None and replies[i].failure is None:
                for payload in asked[i]:
                    forget(payload)
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
    path = await probability_path(teacher, lc.probabilities)
    jobs: list[tuple[int, int, int | None]] = []
    payloads: list[dict[str, Any]] = []
    readers: list[Any] = []
    for ci, case in enumerate(cases):
        if case.options is None or not case.steps:
            continue
        letters = case.options.letters
        for n in range(len(case.steps) + 1):
            text = core.render_locate_prompt(
                lc.template, _teacher_question(case), case.options, case.steps[:n], lc.prior_strength, lc.prior_template
            )
            base = _teacher_payload(config, text, case.row, lc.max_tokens, lc.top_logprobs, lc.system)
            for k, payload, reader in _probability_requests(path, base, letters, lc.top_logprobs):
                jobs.append((ci, n, k))
                payloads.append(payload)
                readers.append(reader)
    results = await _ask_until_readable(teacher, payloads, readers, config.malformed_retries)
    per_case: dict[int, dict[int, list[tuple[Reply, Any]]]] = {}
    for (ci, n, _k), res in zip(jobs, results):
        per_case.setdefault(ci, {}).setdefault(n, []).append(res)
    for ci, case in enumerate(cases):
        if case.options is None:
            case.located = locate.Located(None, "failed")
            continue
        if not case.steps:
            case.located = locate.Located(None, locate.NO_STEPS)
            continue
        got = per_case.get(ci, {})
        case.prob_path = path
        case.raw["locate"] = [[r.text for r, _ in got[n]] if path == "likelihood" else got[n][0][0].text for n in sorted(got)]
        probs = []
        for n in sorted(got):
            replies = got[n]
            bad = next(((r, p) for r, p in replies if p is None), None)
            if bad is not None:
                reply = bad[0]
                case.failures.append(
                    f"locate prefix {n} ({path}): "
                    + (reply.failure or f"no option probabilities in reply {str(reply.text)[:80]!r}")
                )
                probs.append(None)
            elif path == "likelihood":
                p = locate.likelihood_probs([v for _, v in replies])
                if p is None:
                    case.failures.append(f"locate prefix {n} (likelihood): the options share every scored token")
                probs.append(p)
            else:
                probs.append(replies[0][1])
        if any(p is None for p in probs):
            case.located = locate.Located(None, "failed")
            continue
        case.margins = locate.switch_margins(probs, case.options)
        case.located = locate.locate_answer_switch(
            case.margins, lc.delta, lc.consecutive, fallback=lc.fallback, run_may_end=lc.run_may_end
        )


async def probability_path(teacher: Any, wanted: str) -> str:
    """The path that reads option probabilities: ``wanted``, or for ``auto`` the best the teacher offers
    (constrained choice, then option likelihood, then a free reply's top_logprobs), probed once."""
    if wanted != "auto":
        return wanted
    supports = getattr(teacher, "supports", None)
    if supports is not None:
        for path in ("choice", "likelihood"):
            if await supports(path):
                return path
    return "top_logprobs"


def _probability_requests(
    path: str, base: dict[str, Any], letters: Sequence[str], top_logprobs: int
) -> list[tuple[int | None, dict[str, Any], Any]]:
    """The requests of one prefix on a probability path, each with its reader: ``(option or None, payload, reader)``."""
    if path == "likelihood":
        out = []
        for k, letter in enumerate(letters):
            payload = {key: v for key, v in base.items() if key not in ("logprobs", "top_logprobs")}
            payload.update(
                messages=[*base["messages"], {"role": "assistant", "content": letter}],
                max_tokens=1,
                extra_body={"add_generation_prompt": False, "continue_final_message": True, "prompt_logprobs": 0},
            )
            out.append((k, payload, lambda r: r.prompt_logprobs or None))
        return out
    payload = dict(base)
    if path == "choice":
        payload.update(
            max_tokens=1, logprobs=True, top_logprobs=min(20, max(top_logprobs, len(letters))),
            extra_body={"structured_outputs": {"choice": list(letters)}},
        )
    return [(None, payload, lambda r, letters=tuple(letters): locate.option_probs(r.tokens, letters))]


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
    """Step 3: one missing-skill phrase per located error (few-shot prompt), as JSON following
    :data:`~edray.diagnose.prompts.SKILL_SCHEMA` where the endpoint enforces schemas, else free text."""
    sc = config.skill
    todo = [c for c in cases if c.located is not None and c.located.step is not None]
    if not todo:
        return
    structured = sc.structured == "json_schema"
    if sc.structured == "auto" and getattr(teacher, "supports", None) is not None:
        structured = await teacher.supports("json_schema")
    payloads = []
    for case in todo:
        system, text = core.render_skill_prompt(
            sc.system, sc.template, sc.example_template, sc.examples, _teacher_question(case),
            _gold_text(case), case.steps[case.located.step - 1],
        )
        payload = _teacher_payload(config, text, case.row, sc.max_tokens, 0, system, with_images=sc.with_images)
        if structured:
            payload["response_format"] = prompts.json_schema_format("skill", prompts.SKILL_SCHEMA)
        payloads.append(payload)
    readers = [lambda r: core.parse_skill(r.text, sc.max_words, sc.reject)] * len(payloads)
    results = await _ask_until_readable(teacher, payloads, readers, config.malformed_retries)
    for case, (reply, skill) in zip(todo, results):
        case.raw["skill"] = reply.text
        case.skill = skill
        if skill is None:
            case.failures.append("skill: " + (reply.failure or f"no skill phrase in reply {str(reply.text)[:80]!r}"))


