"""Locating the first erroneous step of a wrong answer (docs/method.md §1 step 2, "answer switch").

Pure functions, no I/O. The job asks the teacher, after each prefix of the student's steps, for its
distribution over the option letters, by one of three paths (:data:`PROB_PATHS`, best first):

- ``choice``: the reply constrained to the letters; :func:`option_probs` reads its first token's logprobs;
- ``likelihood``: each letter scored as the continuation of the prompt; :func:`likelihood_probs`;
- ``top_logprobs``: a free reply; :func:`option_probs` reads the letters among its tokens' alternatives.

:func:`locate_answer_switch` then applies the rule:

    the erroneous step is the first step i after which P(student's wrong answer) − P(gold) > δ, and the
    difference stays above δ for λ consecutive steps (i, i+1, …, i+λ−1).

δ (``delta``), λ (``consecutive``) and the strength of the gold prior are configuration: the paper does
not publish them. When no step qualifies a fallback rule picks a step and the result says so
(``fallback_largest_increase``, ``fallback_last_step`` or ``fallback_first_step``).

The two comparison locators of the paper's ablation are here too: :func:`locate_random` and
:func:`locate_first_rejected` (the teacher asked per step whether the step is correct).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from edray.diagnose.scoring import LETTERS, choice_index, normalize_text

PROB_PATHS = ("choice", "likelihood", "top_logprobs")
ANSWER_SWITCH = "answer_switch"
RANDOM = "random"
ASK_PER_STEP = "ask_per_step"
NO_STEPS = "no_steps"
FALLBACKS = ("largest_increase", "last_step", "first_step")


@dataclass(frozen=True)
class Options:
    """The options the teacher chooses among for one wrong answer.

    Attributes:
        texts: option texts in letter order.
        gold: index of the gold option.
        wrong: index of the student's answer, or ``None`` when it names no option (then P(wrong) is the
            mass of every non-gold option).
        open_ended: the options were built from an open-ended question (gold vs. the student's answer).
    """

    texts: tuple[str, ...]
    gold: int
    wrong: int | None
    open_ended: bool

    @property
    def letters(self) -> tuple[str, ...]:
        return tuple(LETTERS[: len(self.texts)])


def _stable_int(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


def build_options(
    gold: str,
    student_answer: str,
    answer_type: str,
    choices: Sequence[str] | None,
    key: str,
    seed: int = 0,
) -> Options:
    """The options for the answer-switch prompt.

    Multiple choice keeps the question's options. Anything else (yes/no, number, open) becomes two options
    — the gold answer and the student's answer — in an order fixed by ``key`` and ``seed``, so that the
    gold is not always ``A`` (docs/method.md §1 step 2: "turn the question into two options").

    Args:
        gold: the gold answer (a letter or option text for multiple choice).
        student_answer: the student's final answer.
        answer_type: the sample's answer type.
        choices: the options for multiple choice.
        key: a stable key of the sample (its id) that fixes the option order.
        seed: run seed mixed into the order.

    Returns:
        The options with the gold and wrong indices.

    Raises:
        ValueError: a multiple-choice gold answer that names none of the options.
    """
    if choices:
        g = choice_index(gold, choices)
        if g is None:
            raise ValueError(f"gold answer {gold!r} names none of the options {list(choices)!r}")
        w = choice_index(student_answer, choices)
        return Options(tuple(str(c) for c in choices), g, None if w == g else w, open_ended=False)
    student = (student_answer or "").strip() or "(no answer)"
    if normalize_text(student) == normalize_text(gold):
        # A "wrong" answer equal to the gold after normalization (e.g. a scorer disagreement): the two
        # options would be identical, so mark the student's side explicitly.
        student = f"{student} (as the student answered)"
    gold_first = _stable_int(key, seed) % 2 == 0
    texts = (str(gold), student) if gold_first else (student, str(gold))
    return Options(texts, 0 if gold_first else 1, 1 if gold_first else 0, open_ended=True)


_TOKEN_LETTER = re.compile(r"^[\s(\[\"'*]*([A-Za-z])[\s)\].:,\"'*]*$")


def token_letter(token: str) -> str | None:
    """The option letter a generated token stands for (``" B"``, ``"(B"``, ``"B."`` → ``"B"``), else ``None``."""
    m = _TOKEN_LETTER.match(token)
    if not m:
        return None
    letter = m.group(1)
    # Lower-case single letters are ordinary words ("a") far more often than options.
    return letter if letter.isupper() else None


def option_probs(
    tokens: Sequence[tuple[str, float, Sequence[tuple[str, float]]]],
    letters: Sequence[str],
) -> list[float] | None:
    """The teacher's distribution over the options, from the log-probabilities of the option letters.

    The answer position is the first generated token that is an option letter, else (a free reply that
    starts "Step..." or "The answer...") the first position whose alternatives hold an option letter; its
    top alternatives give the letters' probabilities (several spellings of one letter are summed),
    renormalized over the options. Letters absent from the alternatives get probability 0.

    Args:
        tokens: generated tokens as ``(token, logprob, [(alternative, logprob), ...])``.
        letters: the option letters (``A``, ``B``, …).

    Returns:
        One probability per option, summing to 1, or ``None`` when no position offers an option letter or
        no option letter has positive mass (the caller records this as malformed teacher output).
    """
    wanted = set(letters)
    chosen = [t for t in tokens if token_letter(t[0]) in wanted]
    offered = [t for t in tokens if any(token_letter(alt) in wanted for alt, _ in t[2])]
    for token, logprob, top in (chosen or offered)[:1]:
        mass = {letter: 0.0 for letter in letters}
        seen: set[str] = set()
        for alt, lp in list(top) + [(token, logprob)]:
            letter = token_letter(alt)
            if letter in mass and alt not in seen and lp is not None and math.isfinite(lp):
                seen.add(alt)
                mass[letter] += math.exp(lp)
        total = sum(mass.values())
        if total <= 0:
            return None
        return [mass[letter] / total for letter in letters]
    return None


def likelihood_probs(scored: Sequence[Sequence[tuple[str, float | None]]]) -> list[float] | None:
    """The options' distribution from the log-likelihood of each option as the continuation of one prompt.

    Each request was the same prompt followed by one option letter as the assistant's reply; its prompt
    tokens come back as ``(token id, logprob)``. The tokens after the longest common prefix are the
    option's; their summed log-probabilities, softmaxed over the options, are the distribution (how
    lm-eval-harness scores multiple choice).

    Args:
        scored: per option, in letter order, the prompt tokens with their logprobs.

    Returns:
        One probability per option, or ``None`` when an option has no scored token of its own.
    """
    if len(scored) < 2:
        return None
    ids = [[t for t, _ in s] for s in scored]
    common = 0
    while common < min(map(len, ids)) and all(x[common] == ids[0][common] for x in ids):
        common += 1
    totals = []
    for s in scored:
        tail = s[common:]
        if not tail or any(lp is None or not math.isfinite(lp) for _, lp in tail):
            return None
        totals.append(sum(lp for _, lp in tail))  # type: ignore[misc]
    top = max(totals)
    weights = [math.exp(v - top) for v in totals]
    z = sum(weights)
    return [w / z for w in weights]


def switch_margins(probs: Sequence[Sequence[float]], options: Options) -> list[float]:
    """P(student's wrong answer) − P(gold) for each prefix.

    When the student's answer names no option, P(wrong) is the mass of all non-gold options.
    """
    out = []
    for p in probs:
        gold = p[options.gold]
        wrong = p[options.wrong] if options.wrong is not None else 1.0 - gold
        out.append(wrong - gold)
    return out


@dataclass(frozen=True)
class Located:
    """Where the first erroneous step is.

    Attributes:
        step: 1-based index of the erroneous step, or ``None`` when the answer has no steps.
        method: ``answer_switch``, ``fallback_<rule>``, ``random``, ``ask_per_step`` or ``no_steps``.
    """

    step: int | None
    method: str


def locate_answer_switch(
    margins: Sequence[float],
    delta: float,
    consecutive: int,
    fallback: str = "largest_increase",
    run_may_end: bool = True,
) -> Located:
    """Apply the answer-switch rule to the margins of each prefix.

    Args:
        margins: ``margins[0]`` is P(wrong) − P(gold) before any step (the question and the prior alone),
            ``margins[i]`` after steps 1..i. ``len(margins) - 1`` is the number of steps.
        delta: δ; a step qualifies when its margin is strictly greater.
        consecutive: λ ≥ 1; the margin must stay above δ for this many consecutive steps, starting at the
            erroneous one.
        fallback: rule when no step qualifies: ``largest_increase`` (the step whose margin rose most over
            the previous prefix; the earliest on ties), ``last_step`` or ``first_step``.
        run_may_end: a run of fewer than λ steps that reaches the last step qualifies (no later step can
            switch back). ``False`` demands λ full steps.

    Returns:
        The located step and the method that located it.

    Raises:
        ValueError: ``consecutive`` < 1 or an unknown fallback.
    """
    if consecutive < 1:
        raise ValueError(f"consecutive (λ) must be ≥ 1, got {consecutive}")
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown fallback {fallback!r}; known: {FALLBACKS}")
    n = len(margins) - 1
    if n < 1:
        return Located(None, NO_STEPS)
    above = [m > delta for m in margins]
    for i in range(1, n + 1):
        end = i + consecutive - 1
        if end > n:
            if not run_may_end:
                break
            if all(above[i : n + 1]):
                return Located(i, ANSWER_SWITCH)
            continue
        if all(above[i : end + 1]):
            return Located(i, ANSWER_SWITCH)
    if fallback == "last_step":
        return Located(n, "fallback_last_step")
    if fallback == "first_step":
        return Located(1, "fallback_first_step")
    increases = [margins[i] - margins[i - 1] for i in range(1, n + 1)]
    best = max(increases)
    return Located(increases.index(best) + 1, "fallback_largest_increase")


def locate_random(n_steps: int, key: str, seed: int = 0) -> Located:
    """A uniformly random step, fixed by ``key`` and ``seed`` (the paper's random baseline)."""
    if n_steps < 1:
        return Located(None, NO_STEPS)
    return Located(random.Random(_stable_int("random-step", key, seed)).randint(1, n_steps), RANDOM)


def locate_first_rejected(verdicts: Sequence[bool | None], fallback: str = "last_step") -> Located:
    """The first step the teacher judged incorrect (the paper's "ask the teacher per step" baseline).

    Args:
        verdicts: per step, ``True`` (correct), ``False`` (incorrect) or ``None`` (unreadable reply).
        fallback: ``last_step`` or ``first_step`` when no step is judged incorrect.

    Returns:
        The located step; ``method`` is ``ask_per_step`` or ``fallback_<rule>``.
    """
    if not verdicts:
        return Located(None, NO_STEPS)
    for i, v in enumerate(verdicts, start=1):
        if v is False:
            return Located(i, ASK_PER_STEP)
    if fallback == "first_step":
        return Located(1, "fallback_first_step")
    return Located(len(verdicts), "fallback_last_step")


_YES = {"yes", "correct", "true", "right"}
_NO = {"no", "incorrect", "false", "wrong"}


def parse_verdict(text: str | None) -> bool | None:
    """``True``/``False`` from a yes/no style reply (its first word), ``None`` when unreadable."""
    words = normalize_text(text).split()
    if not words:
        return None
    if words[0] in _YES:
        return True
    if words[0] in _NO:
        return False
    return None
