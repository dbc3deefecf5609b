"""The annotation prompt of the index stage (docs/method.md section 1, step 4) and its reply parsers.

The teacher reads a supporting sample's instruction and answer and names the skills it exercises::

    Instruction: Is there a red square?
    Answer: yes
    Which skills does answering this instruction exercise? Reply with one or two short skill
    phrases separated by semicolons.

The reply is ``phrase; phrase``, or ``{"skills": [...]}`` when the request carries
:data:`ANNOTATION_SCHEMA` as a JSON-schema ``response_format`` (endpoints that honour it). Real models
answer loosely ("The skill exercised is counting objects."); :func:`short_phrase` keeps the noun phrase
and rejects sentences about the student or the sample. The diagnose stage names missing skills with the
same extractor.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from edray.schemas import IMAGE_PLACEHOLDER

ANNOTATION_SYSTEM = (
    "You label training samples of a visual instruction dataset with the skills they exercise. Use "
    "short phrases such as 'counting objects', 'reading text in images', 'spatial relations'."
)
ANNOTATION_QUESTION = (
    "Which skills does answering this instruction exercise? Reply with one or two short skill "
    "phrases separated by semicolons."
)

# A skill phrase as structured output: 3-48 lower-case letters, spaces and hyphens. Servers that enforce
# JSON schemas (vLLM's structured outputs) then cannot produce a sentence. The length lives in the
# pattern: strict JSON-schema modes that refuse minLength/maxLength accept a pattern.
PHRASE_SCHEMA: dict[str, Any] = {"type": "string", "pattern": "^[a-z][a-z ,'-]{1,46}[a-z]$"}
ANNOTATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    # A small model repeats items until its token budget runs out: the schema caps the list.
    "properties": {"skills": {"type": "array", "items": PHRASE_SCHEMA, "maxItems": 3}},
    "required": ["skills"],
    "additionalProperties": False,
}


def json_schema_format(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI ``response_format`` asking for JSON that follows ``schema``."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def _one_line(text: str) -> str:
    return " ".join(str(text).replace(IMAGE_PLACEHOLDER, " ").split())


def annotation_messages(
    instruction: str, answer: str, system: str = ANNOTATION_SYSTEM, question: str = ANNOTATION_QUESTION
) -> list[dict[str, str]]:
    """Messages for annotating one supporting sample with its skills (docs/method.md step 4).

    Args:
        instruction: the sample's user turn (image placeholders are removed).
        answer: the sample's assistant turn.
        system: the system message.
        question: the last line of the user turn.
    """
    user = "\n".join([f"Instruction: {_one_line(instruction)}", f"Answer: {_one_line(answer)}", question])
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# --- reply parsers ---------------------------------------------------------------------------------

# "The student is missing the skill of identifying colours." -> "identifying colours"
_LEAD_IN = re.compile(
    r"^(?:.*?\b(?:skills?|abilit(?:y|ies))\s+(?:of|to|in|for|is|are|exercised(?:\s+(?:is|are))?|needed(?:\s+(?:is|are))?|"
    r"missing(?:\s+(?:is|are))?|required(?:\s+(?:is|are))?)\s*:?\s+"
    r"|.*?\b(?:lacks?|is missing|needs?|requires?|exercises?|involves?|tests?)\s+(?:the\s+)?(?:skill\s+of\s+|ability\s+to\s+)?)",
    re.IGNORECASE,
)
_LABEL = re.compile(r"^\s*(?:[-*#>•\d.)\s]*)(?:the\s+)?(?:missing\s+)?skills?\s*(?:missing)?\s*[:：\-–]\s*", re.I)
# Words a phrase may not end on (a cut-off sentence) and words that make it a sentence about someone.
_DANGLING = {"a", "an", "the", "of", "to", "in", "on", "and", "or", "for", "with", "from", "by", "at"}
_SENTENCE = re.compile(
    r"\b(?:student|students|learner|model|he|she|they|i|you|we|his|her|their|answered|answering the question|"
    r"the answer|the question|image shows|picture shows|sorry|cannot|can't|does not|did not|doesn't|didn't|"
    r"failed|fails|wrong|incorrect(?:ly)?|mistake)\b",
    re.IGNORECASE,
)
_MARKER = re.compile(r"^\s*(?:[-*>•]|\(?\d+[.)])\s*")

# One-word replies that are no skill (a 135M model answers "Step" to anything).
_NOT_SKILLS = {"step", "steps", "answer", "option", "options", "yes", "no", "none", "skill", "skills", "unknown", "n/a", "na"}

DEFAULT_REJECT = (
    r"^(i|i'm|i am|sorry|as an)\b",
    r"\bnot sure\b",
    r"\?$",
    r"^the (image|picture|photo) (shows|contains|has)\b",
    r"^[{\[]",
)


def short_phrase(text: str | None, max_words: int, reject: Sequence[str] = DEFAULT_REJECT) -> str | None:
    """The short skill phrase in one line of a reply, or ``None`` when it holds none.

    Drops list markers, ``Skill:`` labels, quotes and markdown; turns a sentence that names a skill
    ("The student is missing the skill of counting objects.") into its phrase ("counting objects");
    keeps the first clause and at most ``max_words`` words, without a dangling ``of``/``the`` at the end.
    What is still a sentence about the student, the question or the image, a hedge or a question
    (``reject`` patterns, case-insensitive) is no phrase.
    """
    if not text:
        return None
    line = str(text).strip()
    if any(re.search(p, line, re.IGNORECASE) for p in reject):
        return None
    line = _LABEL.sub("", line)
    line = re.sub(r"[*_`\"“”]", "", line).strip().strip("'").strip()
    line = _MARKER.sub("", line)
    line = _LEAD_IN.sub("", line, count=1)
    # The first clause: a phrase ends at a period, a colon or an explanation.
    line = re.split(r"[.!:;(]|\s[-–—]\s|,\s*(?:which|because|as|since|so)\b|\s(?:because|since|so that)\s", line)[0]
    line = re.sub(r"^(?:the|a|an)\s+", "", line.strip(), flags=re.IGNORECASE)
    words = line.split()[:max_words]
    while words and words[-1].lower().strip(",'") in _DANGLING:
        words.pop()
    phrase = " ".join(words).strip(" ,'").lower()
    if len(phrase) < 3 or phrase in _NOT_SKILLS or _SENTENCE.search(phrase) or any(re.search(p, phrase, re.IGNORECASE) for p in reject):
        return None
    return phrase


def parse_skill_reply(text: str) -> list[str]:
    """Skill phrase candidates from an annotation or skill-analysis reply (JSON or plain text), unfiltered.

    Returns:
        The items in the teacher's order, stripped; empty when the reply holds none.
    """
    t = (text or "").strip()
    if t.startswith("{") or t.startswith("["):
        try:
            data = json.loads(t)
        except json.JSONDecodeError:
            # JSON cut off by the token budget: the complete quoted items still count.
            return [m for m in re.findall(r'"((?:[^"\\]|\\.)*)"', t) if m not in ("skills", "skill")]
        value = data.get("skills", data.get("skill")) if isinstance(data, dict) else data
        items = value if isinstance(value, list) else [value] if isinstance(value, str) else []
        return [str(s).strip() for s in items if isinstance(s, (str, int, float)) and str(s).strip()]
    t = re.sub(r"^(skills?|missing skill)\s*:\s*", "", t, flags=re.IGNORECASE)
    return [s.strip() for s in re.split(r"[;\n]|,\s+(?:and\s+)?", t) if s.strip()]


def parse_annotation(text: str, max_skills: int, max_words: int = 8) -> list[str]:
    """The skills of an annotation reply: at most ``max_skills`` distinct short phrases.

    Raises:
        ValueError: no phrase could be read from the reply.
    """
    out: list[str] = []
    for item in parse_skill_reply(text):
        phrase = short_phrase(item, max_words)
        if phrase and phrase not in out:
            out.append(phrase)
        if len(out) >= max_skills:
            break
    if not out:
        raise ValueError(f"no skill phrase in the teacher's answer: {(text or '').strip()[:200]!r}")
    return out
