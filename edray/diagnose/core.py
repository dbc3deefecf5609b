"""Pure pieces of the diagnose stage (docs/method.md §1 steps 1–3): prompts, parsing, skill clustering.

Nothing here touches Ray, disk or the network; the job (``edray.diagnose.job``) calls these functions
around the model client.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edray.diagnose.locate import Options
from edray.diagnose.prompts import parse_skill  # noqa: F401 - the skill reply's parser, re-exported
from edray.diagnose.scoring import LETTERS
from edray.schemas import IMAGE_PLACEHOLDER

# --- the student's rollout (step 1) ---------------------------------------------------------------


def question_text(messages: Sequence[dict[str, str]]) -> str:
    """The question of an evaluation sample: its user turns joined (image placeholders kept)."""
    parts = [str(m.get("content") or "") for m in messages if m.get("role", "user") == "user"]
    return "\n".join(p for p in parts if p).strip()


def strip_images(text: str) -> str:
    """The text without ``<image>`` placeholders (for the text-only teacher)."""
    return re.sub(r"\s*" + re.escape(IMAGE_PLACEHOLDER) + r"\s*", " ", text).strip()


def format_options(choices: Sequence[str] | None) -> str:
    """``A. red\\nB. blue`` for multiple choice; empty otherwise."""
    if not choices:
        return ""
    return "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))


def render_student_prompt(template: str, question: str, choices: Sequence[str] | None) -> str:
    """Fill the student's step-by-step template (fields ``{question}``, ``{options}``).

    An empty ``{options}`` leaves no blank lines behind.
    """
    text = template.replace("{question}", question).replace("{options}", format_options(choices))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


_STEP_MARK = re.compile(
    r"(?:^|(?<=[\s.;:!?*]))\**\s*step\s*#?\s*(\d+)\s*\**\s*[:.)\-–]?\s*\**",
    re.IGNORECASE,
)
_LINE_NUMBER = re.compile(r"(?m)^[ \t]*(?:\(?(\d+)[.)]|(\d+)\s*[:\-–])[ \t]+")
_ANSWER_MARK = re.compile(
    r"(?im)(?:^[ \t*#]*(?:final\s+answer|answer)\s*\**\s*[:：\-–]?"
    r"|(?<![\w])(?:final\s+answer|answer)\s*\**\s*[:：]"
    r"|(?<![\w])the\s+(?:final\s+)?answer\s+is\b\s*:?)\s*\**"
)


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().strip("*").strip()


def parse_steps(text: str | None) -> tuple[list[str], str]:
    """Split a step-by-step reply into its steps and final answer.

    Tolerates ``Step 1:`` / ``Step 1.`` / ``step 1)`` / ``**Step 1:**`` / ``1.`` / ``1)`` markers, steps on
    one line or many, extra whitespace, and a missing ``Answer:`` line (the last line then serves as the
    answer when it is not a step, else the last step's text).

    Args:
        text: the student's reply.

    Returns:
        ``(steps, answer)``; steps without their markers, in order; answer stripped (may be empty).
    """
    if not text or not text.strip():
        return [], ""
    body = text.replace("\r\n", "\n").strip()
    answer: str | None = None
    marks = list(_ANSWER_MARK.finditer(body))
    if marks:
        last = marks[-1]
        answer = _clean(body[last.end() :].split("\n\n")[0]).rstrip(".").strip()
        body = body[: last.start()]
    steps = [_clean(s) for s in _split_steps(body)]
    steps = [s for s in steps if s]
    if answer is None:
        lines = [ln.strip() for ln in body.split("\n") if ln.strip()]
        if lines and not (_STEP_MARK.match(lines[-1]) or _LINE_NUMBER.match(lines[-1])) and len(steps) > 1:
            answer = _clean(lines[-1])
            if steps and steps[-1].endswith(answer):
                steps[-1] = _clean(steps[-1][: -len(answer)]) or steps[-1]
                if steps[-1] == answer:
                    steps.pop()
        else:
            answer = steps[-1] if steps else ""
    return steps, answer


def _split_steps(body: str) -> list[str]:
    marks = list(_STEP_MARK.finditer(body))
    if marks:
        return [body[m.end() : (marks[i + 1].start() if i + 1 < len(marks) else len(body))] for i, m in enumerate(marks)]
    marks = list(_LINE_NUMBER.finditer(body))
    if marks:
        return [body[m.end() : (marks[i + 1].start() if i + 1 < len(marks) else len(body))] for i, m in enumerate(marks)]
    lines = [ln for ln in body.split("\n") if ln.strip()]
    if len(lines) > 1:
        return lines
    # One paragraph: sentences are the steps.
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", body) if s.strip()]


# --- mistake identification (step 2) --------------------------------------------------------------


def render_locate_prompt(
    template: str,
    question: str,
    options: Options,
    steps: Sequence[str],
    prior_strength: float,
    prior_template: str = "option {letter} has a {percent}% chance of being right.",
) -> str:
    """The answer-switch user turn for one prefix of the student's steps (docs/method.md §1 step 2).

    Template fields: ``{question}``, ``{options}`` (``A. …`` lines), ``{prior}`` (``prior_template`` with
    ``{letter}`` = the gold option and ``{percent}`` = the prior strength in percent), ``{steps}``
    (``Step i: …`` lines, possibly none), ``{letters}`` (``A, B, C``).
    """
    gold_letter = options.letters[options.gold]
    prior = _fill(prior_template, {"letter": gold_letter, "percent": percent_text(prior_strength)})
    steps_text = "\n".join(f"Step {i}: {_one_line(s)}" for i, s in enumerate(steps, start=1))
    fields = {
        "question": question.strip(),
        "options": format_options(options.texts),
        "prior": prior,
        "steps": steps_text,
        "letters": ", ".join(options.letters),
    }
    text = _fill(template, fields)
    # No steps yet: drop the empty line the {steps} field leaves.
    return re.sub(r"\n{2,}", "\n", text) if not steps else text


def percent_text(p: float) -> str:
    """``0.6`` → ``"60"``, ``0.655`` → ``"65.5"``."""
    v = round(p * 100, 1)
    return str(int(v)) if v == int(v) else str(v)


def render_verdict_prompt(template: str, question: str, gold: str, steps: Sequence[str]) -> str:
    """The per-step "is this step correct?" prompt for the last of ``steps`` (the ask-per-step locator).

    Fields: ``{question}``, ``{gold}``, ``{steps}`` (``Step i:`` lines up to the judged step),
    ``{previous}`` (the lines before it, or ``(none)``), ``{step}`` (its text), ``{step_index}``.
    """
    lines = [f"Step {i}: {_one_line(s)}" for i, s in enumerate(steps, start=1)]
    return _fill(
        template,
        {"question": question.strip(), "gold": gold, "steps": "\n".join(lines),
         "previous": "\n".join(lines[:-1]) or "(none)", "step": _one_line(steps[-1]), "step_index": str(len(steps))},
    )


# --- skill analysis (step 3) -----------------------------------------------------------------------


def render_skill_prompt(
    system_template: str,
    template: str,
    example_template: str,
    examples: Sequence[dict[str, str]],
    question: str,
    gold: str,
    step: str,
) -> tuple[str, str]:
    """The few-shot skill-analysis prompt as ``(system, user)`` (docs/method.md §1 step 3).

    Each example (keys ``question``, ``gold``, ``step``, ``skill``) is rendered with ``example_template``;
    the examples fill ``{examples}`` of the system message; the query fills ``{question}`` (on one line),
    ``{gold}`` and ``{step}`` of the user turn.
    """
    shots = "\n\n".join(_fill(example_template, {k: str(v) for k, v in ex.items()}) for ex in examples)
    system = _fill(system_template, {"examples": shots}).strip()
    user = _fill(template, {"question": _one_line(question), "gold": gold.strip(), "step": _one_line(step)})
    return system, user


def _one_line(text: str) -> str:
    return " ".join(strip_images(text).split())


def _fill(template: str, fields: dict[str, str]) -> str:
    # str.format would choke on braces inside questions or examples; fill only known fields.
    out = template
    for key, value in fields.items():
        out = out.replace("{" + key + "}", value)
    return out


# --- capability gaps -------------------------------------------------------------------------------


def cluster_skills(embeddings: np.ndarray, threshold: float, linkage: str = "average") -> np.ndarray:
    """Agglomerative clustering of skill embeddings on cosine distance.

    Args:
        embeddings: ``(n, d)`` array; rows need not be normalized (zero rows form their own clusters).
        threshold: cosine distance at which clusters stop merging (0 merges only identical directions).
        linkage: ``average``, ``complete`` or ``single``.

    Returns:
        ``(n,)`` int labels, numbered 0.. by decreasing cluster size, ties by first member.

    Raises:
        ValueError: ``embeddings`` is not 2-D.
    """
    from scipy.cluster.hierarchy import fcluster
    from scipy.cluster.hierarchy import linkage as scipy_linkage

    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D, got shape {x.shape}")
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    dist = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    zero = norms[:, 0] == 0
    dist[zero, :] = 2.0
    dist[:, zero] = 2.0
    np.fill_diagonal(dist, 0.0)
    condensed = dist[np.triu_indices(n, k=1)]
    raw = fcluster(scipy_linkage(condensed, method=linkage), t=threshold, criterion="distance")
    counts = Counter(raw.tolist())
    first = {}
    for i, r in enumerate(raw.tolist()):
        first.setdefault(r, i)
    order = sorted(counts, key=lambda r: (-counts[r], first[r]))
    remap = {r: k for k, r in enumerate(order)}
    return np.array([remap[r] for r in raw.tolist()], dtype=np.int64)


@dataclass
class Gap:
    """A capability gap: missing-skill phrases that mean the same thing.

    Attributes:
        gap_id: 0.. by decreasing error count.
        skill: the representative phrase (the most frequent; ties: nearest the cluster centroid).
        phrases: distinct phrases in the cluster, most frequent first.
        error_ids: ids of the errors in the gap.
        error_count: number of errors in the gap.
    """

    gap_id: int
    skill: str
    phrases: list[str] = field(default_factory=list)
    error_ids: list[str] = field(default_factory=list)
    error_count: int = 0


def build_gaps(
    error_ids: Sequence[str],
    phrases: Sequence[str],
    embeddings: np.ndarray,
    labels: np.ndarray,
) -> list[Gap]:
    """Group errors into gaps from cluster labels.

    Args:
        error_ids: one id per error, aligned with ``phrases``, ``embeddings`` and ``labels``.
        phrases: missing-skill phrase of each error.
        embeddings: ``(n, d)`` embeddings of the phrases.
        labels: cluster label of each error (from :func:`cluster_skills`).

    Returns:
        Gaps ordered by ``gap_id``.
    """
    gaps: list[Gap] = []
    x = np.asarray(embeddings, dtype=np.float64)
    for label in sorted(set(int(v) for v in labels)):
        idx = [i for i, v in enumerate(labels) if int(v) == label]
        counts = Counter(phrases[i] for i in idx)
        top = max(counts.values())
        tied = [p for p in counts if counts[p] == top]
        if len(tied) > 1:
            centroid = x[idx].mean(axis=0)
            norm = np.linalg.norm(centroid) or 1.0

            def closeness(p: str) -> float:
                j = next(i for i in idx if phrases[i] == p)
                v = x[j]
                return float(v @ centroid / ((np.linalg.norm(v) or 1.0) * norm))

            tied.sort(key=lambda p: (-closeness(p), p))
        skill = tied[0]
        ordered = sorted(counts, key=lambda p: (-counts[p], p))
        gaps.append(Gap(label, skill, ordered, [str(error_ids[i]) for i in idx], len(idx)))
    return gaps
