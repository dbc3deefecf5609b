"""Scoring a student's final answer against the gold answer (docs/method.md §1 step 1: which answers are wrong).

Scorers are pure functions ``(prediction, gold, choices) -> float in [0, 1]``; the answer counts as
correct when the score reaches ``correct_threshold``. Which scorer applies to which ``answer_type`` is
configuration (:class:`edray.diagnose.config.ScoringConfig`).

- ``choice``: multiple choice. The prediction may be a letter (``B``, ``(B)``, ``B.``, ``option B``) or
  the option text; the gold may be a letter or the option text.
- ``exact``: normalized exact match (lower case, punctuation, articles and extra whitespace removed,
  number words mapped to digits).
- ``numeric``: the first number in the prediction within an absolute or relative tolerance of the gold.
- ``vqa_soft``: VQA-style soft accuracy ``min(1, matches / 3)`` over the gold answers (a JSON list or
  ``|``-separated alternatives in ``answer``); a single gold answer reduces to ``exact``.
- ``contains``: the normalized gold appears as whole words in the normalized prediction.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Sequence

LETTERS = string.ascii_uppercase
# The scorer of each answer type unless configured otherwise (ScoringConfig.scorer_by_type).
DEFAULT_SCORERS: dict[str, str] = {"multiple_choice": "choice", "yes_no": "exact", "number": "numeric", "open": "exact"}

_ARTICLES = {"a", "an", "the"}
_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
}  # fmt: skip
_PUNCT = re.compile(r"[^\w\s.\-]")
_NUMBER = re.compile(r"[-+]?(?:\d+(?:[.,]\d+)*(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")


def normalize_text(text: str | None) -> str:
    """Lower-case, drop punctuation and articles, map number words to digits, collapse whitespace."""
    if not text:
        return ""
    t = _PUNCT.sub(" ", str(text).lower())
    # A period or hyphen is kept inside numbers ("3.5", "-2") and dropped everywhere else.
    t = re.sub(r"(?<!\d)[.\-]|[.\-](?!\d)", " ", t)
    words = [_NUMBER_WORDS.get(w, w) for w in t.split() if w not in _ARTICLES]
    return " ".join(words)


def parse_number(text: str | None) -> float | None:
    """The first number in ``text`` (``1,234`` → 1234; number words count), or ``None``."""
    if not text:
        return None
    t = " ".join(_NUMBER_WORDS.get(w, w) for w in str(text).lower().split())
    m = _NUMBER.search(t)
    if not m:
        return None
    raw = m.group(0)
    # "1,234" is a thousands separator; "3,5" a decimal comma.
    raw = raw.replace(",", "") if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", raw) else raw.replace(",", ".")
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


_LETTER_PATTERNS = (
    re.compile(r"^\(?([A-Z])\)?(?:[.:)\]]|\s|$)"),
    re.compile(r"\b(?:option|choice|answer(?: is)?)\s*[:(]?\s*\(?([A-Z])\)?(?![A-Za-z])", re.IGNORECASE),
)


def choice_index(text: str | None, choices: Sequence[str]) -> int | None:
    """Which option ``text`` names: a letter within range, else the option text.

    Args:
        text: a prediction or gold answer (``"B"``, ``"(b) red"``, ``"option C"``, ``"red"``).
        choices: the options in order; letter ``A`` is ``choices[0]``.

    Returns:
        The 0-based option index, or ``None`` when ``text`` names no option.
    """
    if text is None or not choices:
        return None
    raw = str(text).strip()
    if not raw:
        return None
    norm_choices = [normalize_text(c) for c in choices]
    norm = normalize_text(raw)
    # Whole option text first: an option may itself start with a capital letter ("A cat").
    for i, c in enumerate(norm_choices):
        if c and norm == c:
            return i
    for pattern in _LETTER_PATTERNS:
        m = pattern.search(raw if pattern.flags & re.IGNORECASE else raw.upper() if len(raw) <= 3 else raw)
        if m:
            idx = LETTERS.index(m.group(1).upper())
            if idx < len(choices):
                return idx
    hits = [i for i, c in enumerate(norm_choices) if c and re.search(rf"(?<!\w){re.escape(c)}(?!\w)", norm)]
    return hits[0] if len(hits) == 1 else None


def score_choice(prediction: str | None, gold: str, choices: Sequence[str] | None) -> float:
    """1.0 when the prediction names the gold option (by letter or text), else 0.0."""
    if not choices:
        return score_exact(prediction, gold)
    g = choice_index(gold, choices)
    p = choice_index(prediction, choices)
    if g is None:
        return score_exact(prediction, gold)
    return 1.0 if p == g else 0.0


def score_exact(prediction: str | None, gold: str, choices: Sequence[str] | None = None) -> float:
    """Normalized exact match."""
    p, g = normalize_text(prediction), normalize_text(gold)
    return 1.0 if p and p == g else 0.0


def score_contains(prediction: str | None, gold: str, choices: Sequence[str] | None = None) -> float:
    """The normalized gold occurs as whole words in the normalized prediction."""
    p, g = normalize_text(prediction), normalize_text(gold)
    if not p or not g:
        return 0.0
    return 1.0 if re.search(rf"(?<!\w){re.escape(g)}(?!\w)", p) else 0.0


def score_numeric(
    prediction: str | None,
    gold: str,
    choices: Sequence[str] | None = None,
    abs_tol: float = 1e-6,
    rel_tol: float = 0.0,
) -> float:
    """The prediction's first number lies within ``abs_tol`` or ``rel_tol`` of the gold number."""
    p, g = parse_number(prediction), parse_number(gold)
    if p is None or g is None:
        return score_exact(prediction, gold)
    return 1.0 if abs(p - g) <= max(abs_tol, rel_tol * abs(g)) else 0.0


def gold_alternatives(gold: str) -> list[str]:
    """Gold answers from ``answer``: a JSON list, ``a|b|c`` alternatives, or one answer."""
    text = str(gold).strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
            if isinstance(value, list):
                return [str(v) for v in value]
        except json.JSONDecodeError:
            pass
    return [a for a in (s.strip() for s in text.split("|")) if a] or [text]


def score_vqa_soft(prediction: str | None, gold: str, choices: Sequence[str] | None = None) -> float:
    """VQA accuracy: ``min(1, #gold answers equal to the prediction / 3)``; one gold answer → exact match."""
    golds = gold_alternatives(gold)
    p = normalize_text(prediction)
    if not p:
        return 0.0
    matches = sum(1 for g in golds if normalize_text(g) == p)
    if len(golds) < 3:
        return 1.0 if matches else 0.0
    return min(1.0, matches / 3.0)


SCORERS = {
    "choice": score_choice,
    "exact": score_exact,
    "contains": score_contains,
    "numeric": score_numeric,
    "vqa_soft": score_vqa_soft,
}


def score_answer(
    prediction: str | None,
    gold: str,
    answer_type: str,
    choices: Sequence[str] | None,
    scorer_by_type: dict[str, str],
    abs_tol: float = 1e-6,
    rel_tol: float = 0.0,
) -> float:
    """Score one answer with the scorer configured for its answer type.

    Args:
        prediction: the student's final answer (may be empty).
        gold: the gold answer.
        answer_type: ``multiple_choice``, ``yes_no``, ``number`` or ``open``.
        choices: the options for multiple choice, else ``None``.
        scorer_by_type: answer type → scorer name (a key of :data:`SCORERS`); unknown types use ``exact``.
        abs_tol: absolute tolerance of the ``numeric`` scorer.
        rel_tol: relative tolerance of the ``numeric`` scorer.

    Returns:
        A score in [0, 1].

    Raises:
        ValueError: the configured scorer name is unknown.
    """
    name = scorer_by_type.get(answer_type, "exact")
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r} for answer_type {answer_type!r}; known: {sorted(SCORERS)}")
    if name == "numeric":
        return score_numeric(prediction, gold, choices, abs_tol=abs_tol, rel_tol=rel_tol)
    if answer_type == "yes_no" and name == "exact":
        # "Yes, there is a red square." is a yes.
        first = normalize_text(prediction).split()[:1]
        return score_exact(first[0] if first else "", gold)
    return SCORERS[name](prediction, gold, choices)
