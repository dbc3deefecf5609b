"""Configuration of the diagnose stage (docs/method.md §1 steps 1–3).

``edray config show diagnose`` prints every field with its description. δ, λ and the strength of the
gold prior are not published by the paper: they are fields here.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from edray.config import EdrayModel
from edray.diagnose.prompts import (
    DEFAULT_LOCATE_SYSTEM,
    DEFAULT_LOCATE_TEMPLATE,
    DEFAULT_PRIOR_TEMPLATE,
    DEFAULT_SKILL_EXAMPLE_TEMPLATE,
    DEFAULT_SKILL_EXAMPLES,
    DEFAULT_SKILL_REJECT,
    DEFAULT_SKILL_SYSTEM,
    DEFAULT_SKILL_TEMPLATE,
    DEFAULT_STUDENT_TEMPLATES,
    DEFAULT_VERDICT_SYSTEM,
    DEFAULT_VERDICT_TEMPLATE,
)
from edray.diagnose.scoring import DEFAULT_SCORERS
from edray.serve.config import ClientConfig


class PromptConfig(EdrayModel):
    """The student's prompt: one template per model family (shared by diagnose and evaluate, so the
    student is asked the same way when it is diagnosed and when it is scored)."""

    family: str = Field("default", min_length=1, max_length=64, description="Key of the prompt template to use.")
    templates: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_STUDENT_TEMPLATES),
        description="Prompt template per model family; fields {question} and {options}.",
    )

    @model_validator(mode="after")
    def _family_known(self) -> "PromptConfig":
        if self.family not in self.templates:
            raise ValueError(f"family {self.family!r} has no template; known: {sorted(self.templates)}")
        return self


class StudentConfig(PromptConfig):
    """The student's step-by-step rollout over the validation set (step 1)."""

    client: ClientConfig = Field(
        default_factory=lambda: ClientConfig(model="student"),
        description="How to reach the student to diagnose (in round k: the student tuned in round k−1).",
    )
    max_tokens: int = Field(256, ge=1, le=32768, description="Upper bound on tokens per step-by-step reply.")


class ScoringConfig(EdrayModel):
    """Which answers count as wrong."""

    scorer_by_type: dict[str, Literal["choice", "exact", "contains", "numeric", "vqa_soft"]] = Field(
        default_factory=lambda: dict(DEFAULT_SCORERS),
        description="Scorer per answer_type; types not listed use exact match.",
    )
    abs_tol: float = Field(1e-6, ge=0.0, le=1e12, description="Absolute tolerance of the numeric scorer.")
    rel_tol: float = Field(0.0, ge=0.0, le=1.0, description="Relative tolerance of the numeric scorer.")
    correct_threshold: float = Field(1.0, gt=0.0, le=1.0, description="A score at or above this counts as correct.")


class LocateConfig(EdrayModel):
    """Mistake identification: the answer-switch rule and its comparison locators (step 2)."""

    method: Literal["answer_switch", "random", "ask_per_step"] = Field(
        "answer_switch",
        description="answer_switch (the method); random and ask_per_step are the paper's comparison locators.",
    )
    delta: float = Field(
        0.0, ge=-1.0, lt=1.0, description="δ: a step qualifies when P(wrong) − P(gold) after it is above this."
    )
    consecutive: int = Field(
        1, ge=1, le=50, description="λ: the margin must stay above δ for this many consecutive steps."
    )
    run_may_end: bool = Field(
        True, description="A qualifying run shorter than λ that reaches the last step counts."
    )
    prior_strength: float = Field(
        0.6, gt=0.0, lt=1.0, description="P in the prior 'option X has a P% chance of being right' (X = gold)."
    )
    fallback: Literal["largest_increase", "last_step", "first_step"] = Field(
        "largest_increase", description="Step chosen when no step qualifies (recorded as fallback_<rule>)."
    )
    system: str = Field(DEFAULT_LOCATE_SYSTEM, description="System message of the answer-switch prompt (empty: none).")
    template: str = Field(
        DEFAULT_LOCATE_TEMPLATE,
        min_length=1,
        description="Answer-switch user turn; fields {question}, {options}, {prior}, {steps}, {letters}.",
    )
    prior_template: str = Field(
        DEFAULT_PRIOR_TEMPLATE, min_length=1, description="The prior sentence; fields {letter}, {percent}."
    )
    verdict_system: str = Field(DEFAULT_VERDICT_SYSTEM, description="System message of the per-step verdict prompt.")
    verdict_template: str = Field(
        DEFAULT_VERDICT_TEMPLATE,
        min_length=1,
        description="Per-step 'is this step correct?' prompt (ask_per_step); fields {question}, {gold}, {steps} "
        "(steps 1..k), {previous} (steps before k), {step} (step k), {step_index} (k).",
    )
    probabilities: Literal["auto", "choice", "likelihood", "top_logprobs"] = Field(
        "auto",
        description="How P(option) is read after each prefix: choice (the reply constrained to the option "
        "letters, vLLM structured outputs; its logprobs), likelihood (each option letter scored as the "
        "continuation of the prompt, vLLM prompt_logprobs; one request per option), top_logprobs (the "
        "alternatives of a free reply's first tokens); auto: the first of these the endpoint offers, "
        "probed once.",
    )
    top_logprobs: int = Field(5, ge=2, le=20, description="Alternatives read per generated token.")
    max_tokens: int = Field(1, ge=1, le=64, description="Tokens generated per answer-switch query.")
    verdict_max_tokens: int = Field(4, ge=1, le=64, description="Tokens generated per verdict query.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the option order of open-ended questions and of random.")


class SkillConfig(EdrayModel):
    """Skill analysis: one missing-skill phrase per error (step 3)."""

    system: str = Field(
        DEFAULT_SKILL_SYSTEM, description="System message holding the few-shot examples; field {examples}."
    )
    template: str = Field(
        DEFAULT_SKILL_TEMPLATE, min_length=1, description="Skill-analysis user turn; fields {question}, {gold}, {step}."
    )
    example_template: str = Field(
        DEFAULT_SKILL_EXAMPLE_TEMPLATE, min_length=1, description="How one example is rendered into {examples}."
    )
    examples: list[dict[str, str]] = Field(
        default_factory=lambda: [dict(e) for e in DEFAULT_SKILL_EXAMPLES],
        description="Few-shot examples, each with keys question, gold, step, skill.",
    )
    with_images: bool = Field(
        False,
        description="Attach the sample's images to skill queries (docs/method.md §1 step 3 gives the teacher the "
        "question, gold answer and erroneous step only).",
    )
    max_words: int = Field(8, ge=1, le=64, description="Longest skill phrase kept (extra words dropped).")
    reject: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SKILL_REJECT),
        description="Regular expressions (case-insensitive) of replies that are not skill phrases (hedges, "
        "questions, descriptions, broken JSON); such a reply counts as unreadable and is re-asked.",
    )

    @field_validator("reject")
    @classmethod
    def _regexes(cls, value: list[str]) -> list[str]:
        import re

        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"reject pattern {pattern!r} is not a regular expression: {exc}") from None
        return value
    max_tokens: int = Field(32, ge=1, le=512, description="Tokens generated per skill query.")
    structured: Literal["auto", "json_schema", "text"] = Field(
        "auto",
        description="json_schema: ask for {\"skill\": <short lower-case phrase>} as a JSON-schema response_format; "
        "text: free text, from which a short noun phrase is extracted (sentences about the student are "
        "rejected); auto: json_schema when the endpoint enforces schemas (probed once), else text.",
    )

    @model_validator(mode="after")
    def _examples_complete(self) -> "SkillConfig":
        for i, ex in enumerate(self.examples):
            missing = {"question", "gold", "step", "skill"} - set(ex)
            if missing:
                raise ValueError(f"examples[{i}] lacks {sorted(missing)}")
        return self


class GapConfig(EdrayModel):
    """Capability gaps: missing-skill phrases embedded and clustered."""

    embedder: Optional[str] = Field(
        None, max_length=4096, description="sentence-transformers folder; default: the packaged all-MiniLM-L6-v2."
    )
    threshold: float = Field(
        0.35, ge=0.0, le=2.0, description="Cosine distance below which clusters merge (agglomerative)."
    )
    linkage: Literal["average", "complete", "single"] = Field("average", description="Linkage of the clustering.")
    max_examples: int = Field(5, ge=0, le=1000, description="Example errors kept per gap in gaps.parquet.")
    batch_size: int = Field(64, ge=1, le=65536, description="Phrases per embedding batch.")


class DiagnoseConfig(EdrayModel):
    """The diagnose stage: the student's mistakes on the validation set, located and named."""

    validation: str = Field(
        "worlds/w0/eval/locate_item/validation.parquet",
        min_length=1,
        max_length=4096,
        description="Validation set: a Parquet file or folder in EVAL_SCHEMA (default: a target task of the "
        "world that `edray world generate --out worlds/w0` writes).",
    )
    task: Optional[str] = Field(
        None, max_length=256, description="Keep only rows whose source_task is this (default: all rows)."
    )
    round: int = Field(0, ge=0, le=1000, description="Round index k: the student tuned in round k−1 is diagnosed.")
    limit: Optional[int] = Field(None, ge=1, le=10_000_000, description="Use only the first N validation rows.")
    student: StudentConfig = Field(default_factory=StudentConfig, description="The student and its prompt.")
    teacher: ClientConfig = Field(
        default_factory=lambda: ClientConfig(model="teacher"), description="How to reach the teacher."
    )
    teacher_sees_images: bool = Field(
        True, description="Send the sample's images with answer-switch and verdict queries (off for a text-only teacher)."
    )
    malformed_retries: int = Field(
        2, ge=0, le=20, description="Re-asks of a teacher reply that cannot be read (with another seed)."
    )
    cache: bool = Field(
        True, description="Cache model replies under <run-dir>/cache for clients that set no cache_dir."
    )
    max_failure_share: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Stop with an error when more than this share of the answers (student calls) or of the "
        "errors (teacher calls) failed or came back unusable; what succeeded stays in the response cache, "
        "so a re-run pays only for the rest. 1 never stops.",
    )
    scoring: ScoringConfig = Field(default_factory=ScoringConfig, description="Answer scoring.")
    locate: LocateConfig = Field(default_factory=LocateConfig, description="Mistake identification.")
    skill: SkillConfig = Field(default_factory=SkillConfig, description="Skill analysis.")
    gaps: GapConfig = Field(default_factory=GapConfig, description="Capability gaps.")
