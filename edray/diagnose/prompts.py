"""The prompts the diagnose stage sends (docs/method.md section 1, steps 1-3) and the parser of the skill reply.

Every prompt here is a default of :class:`~edray.diagnose.config.DiagnoseConfig`, so a user can rewrite
it in YAML. The answer-switch and verdict prompts are read back by probabilities or a yes/no word
(:mod:`edray.diagnose.locate`); the skill reply by :func:`parse_skill`, which asks for JSON following
:data:`SKILL_SCHEMA` where the endpoint enforces JSON schemas and otherwise extracts a short noun
phrase from free text, rejecting sentences about the student.

The wording below is what docs/diagnose.md documents; any chat model answers it as is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from edray.index.prompts import DEFAULT_REJECT, PHRASE_SCHEMA, json_schema_format, short_phrase

__all__ = [
    "DEFAULT_LOCATE_SYSTEM",
    "DEFAULT_LOCATE_TEMPLATE",
    "DEFAULT_PRIOR_TEMPLATE",
    "DEFAULT_SKILL_EXAMPLES",
    "DEFAULT_SKILL_EXAMPLE_TEMPLATE",
    "DEFAULT_SKILL_REJECT",
    "DEFAULT_SKILL_SYSTEM",
    "DEFAULT_SKILL_TEMPLATE",
    "DEFAULT_STUDENT_TEMPLATES",
    "DEFAULT_VERDICT_SYSTEM",
    "DEFAULT_VERDICT_TEMPLATE",
    "SKILL_SCHEMA",
    "json_schema_format",
    "parse_skill",
]

DEFAULT_STUDENT_TEMPLATES = {
    "default": (
        "{question}\n{options}\n"
        "Think step by step. Write each step on its own line as 'Step 1: ...', 'Step 2: ...', "
        "then the final answer on a last line as 'Answer: ...'."
    ),
    "llava": (
        "{question}\n{options}\n"
        "Answer by reasoning in numbered steps ('Step 1:', 'Step 2:', ...) and end with 'Answer:' "
        "followed by your final answer."
    ),
    # Questions that already list their options and whose model was trained to answer in steps (the
    # skills world's student knows only the world's vocabulary): the question alone.
    "plain": "{question}",
    "qwen": (
        "{question}\n{options}\n"
        "Solve this step by step. Number the steps as 'Step 1:', 'Step 2:', ... and finish with a line "
        "'Answer: <your answer>'."
    ),
}

# The teacher prompts follow the wording documented in docs/diagnose.md, which any chat model answers as
# is (and which the skills world's teacher reads back).
DEFAULT_LOCATE_SYSTEM = (
    "You are a careful judge of visual reasoning. You see an image, a multiple-choice question and "
    "a student's reasoning so far. Decide which option is correct given the image and the reasoning."
)
DEFAULT_LOCATE_TEMPLATE = (
    "Question: {question}\n"
    "Options:\n{options}\n"
    "Hint: {prior}\n"
    "Reasoning so far:\n{steps}\n"
    "Which option is correct? Reply with the option letter only."
)
DEFAULT_PRIOR_TEMPLATE = "option {letter} has a {percent}% chance of being right."

DEFAULT_VERDICT_SYSTEM = (
    "You are a careful judge of visual reasoning. You see an image, a question with its correct answer "
    "and a student's reasoning. Judge whether the last step shown is correct."
)
DEFAULT_VERDICT_TEMPLATE = (
    "Question: {question}\n"
    "Correct answer: {gold}\n"
    "Reasoning so far:\n{steps}\n"
    "Is step {step_index} correct? Reply yes or no."
)

DEFAULT_SKILL_SYSTEM = (
    "You diagnose a student's mistakes on visual questions. Given a question, its correct answer and "
    "the first erroneous step of the student's reasoning, name the one visual skill the student is "
    "missing, as a short phrase.\n\n{examples}"
)
DEFAULT_SKILL_TEMPLATE = (
    "Question: {question}\n"
    "Correct answer: {gold}\n"
    "Erroneous step: {step}\n"
    "Which skill is the student missing? Reply with a short phrase."
)
DEFAULT_SKILL_EXAMPLE_TEMPLATE = "Question: {question}\nCorrect answer: {gold}\nErroneous step: {step}\nSkill: {skill}"
DEFAULT_SKILL_EXAMPLES = [
    {
        "question": "What does the sign say?",
        "gold": "stop",
        "step": "The sign says slow.",
        "skill": "reading text in images",
    },
    {
        "question": "How many birds are on the wire?",
        "gold": "3",
        "step": "There are 5 birds on the wire.",
        "skill": "counting objects",
    },
    {
        "question": "Is the cup to the left of the plate?",
        "gold": "no",
        "step": "The cup is on the left side.",
        "skill": "spatial relations",
    },
]


DEFAULT_SKILL_REJECT: list[str] = list(DEFAULT_REJECT)

SKILL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"skill": PHRASE_SCHEMA},
    "required": ["skill"],
    "additionalProperties": False,
}


def parse_skill(text: str | None, max_words: int, reject: Sequence[str] = DEFAULT_SKILL_REJECT) -> str | None:
    """The missing-skill phrase from the teacher's reply, or ``None`` when there is none.

    Takes the ``skill`` of a JSON reply, else the line after a ``Skill:`` label if there is one, else the
    first non-empty line, and keeps its short noun phrase (:func:`edray.index.prompts.short_phrase`): at
    most ``max_words`` words, never a sentence about the student, never a reply matching one of the
    ``reject`` regular expressions (hedges, questions, broken JSON).
    """
    if not text:
        return None
    stripped = str(text).strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError:
            return None
        value = data.get("skill", data.get("skills")) if isinstance(data, dict) else None
        if isinstance(value, list):
            value = value[0] if value else None
        return short_phrase(value, max_words, reject) if isinstance(value, str) else None
    lines = [ln for ln in stripped.replace("\r", "").split("\n") if ln.strip()]
    labelled = [ln for ln in lines if _labelled(ln)]
    for line in labelled + lines[:1]:
        phrase = short_phrase(line, max_words, reject)
        if phrase:
            return phrase
    return None


def _labelled(line: str) -> bool:
    import re

    return re.match(r"^\s*(?:[-*#>•\d.)\s]*)(?:the\s+)?(?:missing\s+)?skill\s*(?:missing)?\s*[:：\-–]", line, re.I) is not None
