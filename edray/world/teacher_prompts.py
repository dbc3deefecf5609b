"""The world teacher's side of the stages' prompts: builders of reference messages and the parsers that
read a prompt back.

The prompts themselves belong to the stages (:mod:`edray.diagnose.prompts`, :mod:`edray.index.prompts`);
the world speaks their protocol, so it imports them, never the reverse. They are ordinary chat prompts
that a real teacher (GPT-4o-mini, a large open model behind vLLM) answers as they are; the world
teacher (:mod:`edray.world.teacher`) reads the same text back with the ``parse_*_prompt`` functions.

1. **Answer switch** (docs/method.md section 1, step 2), one request per prefix of the student's steps,
   with ``logprobs=True, top_logprobs=5, max_tokens=1`` and the image attached::

       <image>
       Question: Find the red square. On which side of the picture does it sit?
       Options:
       A. left
       B. right
       Hint: option A has a 60% chance of being right.
       Reasoning so far:
       Step 1: There is a red square.
       Step 2: The red square is in the right column.
       Which option is correct? Reply with the option letter only.

   The reply is one letter; the option letters' log-probabilities are read from the first token.
2. **Skill analysis** (step 3): few-shot examples in the system message, then::

       Question: ...
       Correct answer: left
       Erroneous step: The red square is in the right column.
       Which skill is the student missing? Reply with a short phrase.

   The reply is a short phrase (``{"skill": "..."}`` when ``response_format`` asks for JSON).
3. **Supporting-sample annotation** (step 4)::

       Instruction: Is there a red square?
       Answer: yes
       Which skills does answering this instruction exercise? Reply with one or two short skill
       phrases separated by semicolons.

   The reply is ``phrase; phrase`` (``{"skills": [...]}`` when ``response_format`` asks for JSON).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from edray.diagnose.prompts import DEFAULT_LOCATE_SYSTEM as ANSWER_SWITCH_SYSTEM
from edray.index.prompts import ANNOTATION_QUESTION, ANNOTATION_SYSTEM, annotation_messages, parse_skill_reply
from edray.schemas import IMAGE_PLACEHOLDER

__all__ = [
    "ANNOTATION_QUESTION",
    "ANNOTATION_SYSTEM",
    "ANSWER_SWITCH_SYSTEM",
    "annotation_messages",
    "build_annotation_messages",
    "build_answer_switch_messages",
    "build_skill_messages",
    "parse_annotation_prompt",
    "parse_answer_switch_prompt",
    "parse_skill_prompt",
    "parse_skill_reply",
    "parse_verdict_prompt",
]

ANSWER_SWITCH_QUESTION = "Which option is correct? Reply with the option letter only."

SKILL_SYSTEM = (
    "You diagnose a student's mistakes on visual questions. Given a question, its correct answer and "
    "the first erroneous step of the student's reasoning, name the one visual skill the student is "
    "missing, as a short phrase.\n\n"
    "Question: What does the sign say?\nCorrect answer: stop\nErroneous step: The sign says slow.\n"
    "Skill: reading text in images\n\n"
    "Question: How many birds are on the wire?\nCorrect answer: 3\nErroneous step: There are 5 birds on the wire.\n"
    "Skill: counting objects\n\n"
    "Question: Is the cup to the left of the plate?\nCorrect answer: no\nErroneous step: The cup is on the left side.\n"
    "Skill: spatial relations"
)
SKILL_QUESTION = "Which skill is the student missing? Reply with a short phrase."

# Parsers accept small variations (case, "Option B", a trailing period) so that prompts rendered from
# a stage's own template (edray.diagnose's configurable templates) are understood too.
_HINT = re.compile(r"^hint:\s*option ([A-Z]) has an? (\d+(?:\.\d+)?)\s*% chance of being (?:right|correct)\.?$", re.IGNORECASE)
_OPTION = re.compile(r"^([A-Z])[.)] (.*)$")
_STEP = re.compile(r"^Step (\d+)\s*[:.)]\s*(.*)$", re.IGNORECASE)
_VERDICT = re.compile(r"^Is step (\d+) correct\?", re.IGNORECASE)


# --- builders (pipeline side) ---------------------------------------------------------------------


def build_answer_switch_messages(
    question: str, options: Sequence[str], hint_letter: str, hint_prob: float, steps: Sequence[str], with_image: bool = True
) -> list[dict[str, str]]:
    """Messages for one answer-switch request (attach the question's image when ``with_image``).

    Args:
        question: the question text (as asked; may contain its own option line).
        options: option texts, lettered A, B, ... in this order.
        hint_letter: the option the prior favours (the gold answer in docs/method.md step 2).
        hint_prob: the prior, in (0, 1), e.g. 0.6.
        steps: the student's step texts so far (without ``Step k:`` prefixes).
        with_image: start the user turn with the image placeholder.

    Returns:
        ``[system, user]`` messages.

    Raises:
        ValueError: fewer than two options, more than 26, or a hint letter out of range.
    """
    if not 2 <= len(options) <= 26:
        raise ValueError(f"answer switch needs 2..26 options, got {len(options)}")
    letters = [chr(65 + i) for i in range(len(options))]
    if hint_letter not in letters:
        raise ValueError(f"hint letter {hint_letter!r} is not one of {letters}")
    if not 0.0 < hint_prob < 1.0:
        raise ValueError(f"hint_prob must be in (0, 1), got {hint_prob}")
    lines = [IMAGE_PLACEHOLDER] if with_image else []
    lines.append(f"Question: {question.strip()}")
    lines.append("Options:")
    lines += [f"{ltr}. {opt}" for ltr, opt in zip(letters, options)]
    lines.append(f"Hint: option {hint_letter} has a {_pct(hint_prob)}% chance of being right.")
    lines.append("Reasoning so far:")
    lines += [f"Step {i}: {s.strip()}" for i, s in enumerate(steps, 1)]
    lines.append(ANSWER_SWITCH_QUESTION)
    return [{"role": "system", "content": ANSWER_SWITCH_SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def _pct(p: float) -> str:
    v = round(p * 100, 1)
    return str(int(v)) if v == int(v) else str(v)


def build_skill_messages(question: str, correct_answer: str, erroneous_step: str) -> list[dict[str, str]]:
    """Messages for one skill-analysis request (docs/method.md step 3)."""
    user = "\n".join(
        [f"Question: {_one_line(question)}", f"Correct answer: {correct_answer.strip()}",
         f"Erroneous step: {erroneous_step.strip()}", SKILL_QUESTION]
    )
    return [{"role": "system", "content": SKILL_SYSTEM}, {"role": "user", "content": user}]


def build_annotation_messages(instruction: str, answer: str) -> list[dict[str, str]]:
    """Messages for annotating one supporting sample with its skills (docs/method.md step 4).

    Args:
        instruction: the sample's user turn (image placeholders are removed).
        answer: the sample's assistant turn.
    """
    return annotation_messages(instruction, answer)


def _one_line(text: str) -> str:
    return " ".join(text.replace(IMAGE_PLACEHOLDER, " ").split())


# --- parsers (teacher side) -----------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerSwitchPrompt:
    question: str
    options: tuple[str, ...]
    hint_letter: str
    hint_prob: float
    steps: tuple[str, ...]


@dataclass(frozen=True)
class SkillPrompt:
    question: str
    correct_answer: str
    erroneous_step: str


@dataclass(frozen=True)
class AnnotationPrompt:
    instruction: str
    answer: str


def parse_answer_switch_prompt(text: str) -> AnswerSwitchPrompt | None:
    """Read an answer-switch user turn back; ``None`` if the text is not one."""
    lines = [ln.strip() for ln in text.replace(IMAGE_PLACEHOLDER, "").strip().splitlines()]
    hint_i = next((i for i, ln in enumerate(lines) if _HINT.match(ln)), None)
    if hint_i is None:
        return None
    opt_i = max((i for i, ln in enumerate(lines[:hint_i]) if ln == "Options:"), default=None)
    q_i = next((i for i, ln in enumerate(lines) if ln.startswith("Question:")), None)
    if opt_i is None or q_i is None or q_i > opt_i:
        return None
    options = []
    for ln in lines[opt_i + 1 : hint_i]:
        m = _OPTION.match(ln)
        if not m or m.group(1) != chr(65 + len(options)):
            return None
        options.append(m.group(2))
    hint = _HINT.match(lines[hint_i])
    assert hint is not None
    steps = [m.group(2) for ln in lines[hint_i + 1 :] if (m := _STEP.match(ln))]
    hint_letter = hint.group(1).upper()
    if ord(hint_letter) - 65 >= len(options) or len(options) < 2:
        return None
    question = "\n".join([lines[q_i][len("Question:"):].strip()] + lines[q_i + 1 : opt_i]).strip()
    return AnswerSwitchPrompt(question, tuple(options), hint_letter, float(hint.group(2)) / 100.0, tuple(steps))


def _field(lines: list[str], name: str) -> str | None:
    """The value of the last ``name:`` line (few-shot examples come before the real query)."""
    for ln in reversed(lines):
        if ln.lower().startswith(f"{name.lower()}:"):
            return ln[len(name) + 1 :].strip()
    return None


@dataclass(frozen=True)
class VerdictPrompt:
    question: str
    steps: tuple[str, ...]


def parse_verdict_prompt(text: str) -> VerdictPrompt | None:
    """Read a per-step "Is step k correct?" user turn (the ask-per-step baseline) back, else ``None``.

    The judged step is step k; earlier ``Step i:`` lines are context.
    """
    lines = [ln.strip() for ln in text.replace(IMAGE_PLACEHOLDER, "").strip().splitlines()]
    verdict = next((m for ln in lines if (m := _VERDICT.match(ln))), None)
    q = _field(lines, "Question")
    if verdict is None or q is None:
        return None
    k = int(verdict.group(1))
    steps = {int(m.group(1)): m.group(2) for ln in lines if (m := _STEP.match(ln))}
    if k not in steps:
        return None
    return VerdictPrompt(q, tuple(steps[i] for i in sorted(steps) if i <= k))


def parse_skill_prompt(text: str) -> SkillPrompt | None:
    """Read a skill-analysis user turn back; ``None`` if the text is not one."""
    lines = [ln.strip() for ln in text.strip().splitlines()]
    q, a, s = _field(lines, "Question"), _field(lines, "Correct answer"), _field(lines, "Erroneous step")
    if q is None or a is None or s is None:
        return None
    return SkillPrompt(q, a, s)


def parse_annotation_prompt(text: str) -> AnnotationPrompt | None:
    """Read an annotation user turn back; ``None`` if the text is not one."""
    lines = [ln.strip() for ln in text.strip().splitlines()]
    i, a = _field(lines, "Instruction"), _field(lines, "Answer")
    if i is None or a is None:
        return None
    return AnnotationPrompt(i, a)
