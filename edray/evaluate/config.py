"""Configuration of the evaluate stage: target gain and general retention (docs/method.md §2, §3).

``edray config show evaluate`` prints every field with its description. The models to compare are a
list: the base student first, then each tuned student (a LoRA adapter over the base, or a full model
folder) and each baseline arm.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from edray.config import EdrayModel
from edray.diagnose.config import PromptConfig, ScoringConfig
from edray.serve.config import ClientConfig


class ModelSpec(EdrayModel):
    """One model to evaluate."""

    name: str = Field(..., min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$", description="Name in the result tables.")
    arm: str = Field(
        "tuned",
        min_length=1,
        max_length=64,
        description="What the model is: base, lora, full, spider, or a baseline arm (random, insta, validation...).",
    )
    path: Optional[str] = Field(
        None,
        max_length=4096,
        description="transformers backend: a full model folder, or a train stage folder holding adapter/ or model/. "
        "Default: the base model's path.",
    )
    adapter: Optional[str] = Field(
        None, max_length=4096, description="transformers backend: a peft LoRA adapter folder applied over the base model."
    )
    served_name: Optional[str] = Field(
        None, max_length=256, description="serve backend: the model name the endpoint serves it under (default: name)."
    )


class GenerationConfig(PromptConfig):
    """How answers are produced (greedy, as diagnose asks the student)."""

    max_tokens: int = Field(256, ge=1, le=32768, description="Upper bound on generated tokens per answer.")
    batch_size: int = Field(32, ge=1, le=4096, description="transformers backend: prompts per generate() batch.")
    torch_threads: int = Field(0, ge=0, le=1024, description="transformers backend: torch threads (0: torch's default).")


class EvaluateConfig(EdrayModel):
    """The evaluate stage: accuracy on the target task's test split, retention on the general suite."""

    target: list[str] = Field(
        ..., min_length=1, max_length=64, description="Target test split(s): Parquet files or folders in EVAL_SCHEMA."
    )
    general: str = Field(..., min_length=1, max_length=4096, description="General suite: a Parquet file or folder in EVAL_SCHEMA.")
    main_task: Optional[str] = Field(
        None,
        max_length=128,
        description="When the target splits hold several tasks (their source_task column), the task whose accuracy "
        "the summary reports (target accuracy, gain, combined score); every task keeps its own rows in scores.parquet. "
        "null: all target rows together.",
    )
    split: Optional[str] = Field(
        "test",
        max_length=64,
        description="Keep only rows whose split column is this (a world folder holds validation and test rows; "
        "scoring on validation rows would measure what diagnose already saw). null keeps every row.",
    )
    round: int = Field(0, ge=0, le=1000, description="Round index k: output goes to round_<k>/evaluate.")
    limit_target: Optional[int] = Field(None, ge=1, le=10_000_000, description="Use only the first N target rows (by id).")
    limit_general: Optional[int] = Field(None, ge=1, le=10_000_000, description="Use only the first N general rows (by id).")
    base: ModelSpec = Field(..., description="The base student; retention is measured against it.")
    models: list[ModelSpec] = Field(
        default_factory=list, max_length=256, description="Tuned students and baseline arms to compare with the base."
    )
    evaluate_base: bool = Field(
        True,
        description="Answer with the base student too. The arm runner evaluates the base once per round and "
        "each arm alone (false), then collects them into round_<k>/evaluate.",
    )
    backend: Literal["transformers", "serve"] = Field(
        "transformers",
        description="transformers: load each model in-process (batched greedy, float32, safetensors, no remote code; the CPU "
        "default). "
        "serve: ask an OpenAI-compatible endpoint through the model client.",
    )
    client: ClientConfig = Field(
        default_factory=lambda: ClientConfig(model="student"),
        description="serve backend: endpoint, limits and cache; the model field is replaced per model.",
    )
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="Prompt and decoding.")
    scoring: ScoringConfig = Field(default_factory=ScoringConfig, description="Answer scoring (the diagnose stage's scorers).")
    cap_retention: bool = Field(
        True,
        description="Cap retention (general accuracy / base general accuracy) at 1 before the combined score, so "
        "a general-suite gain (often noise) cannot hide a target loss.",
    )
    skill_source: Literal["world", "row"] = Field(
        "world",
        description="world: per-skill breakdown from metadata.world.skills when present, else the row's skills; "
        "row: always the row's skills column.",
    )

    @model_validator(mode="after")
    def _names_unique(self) -> "EvaluateConfig":
        names = [self.base.name] + [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {dupes}")
        if self.backend == "transformers":
            if not self.base.path:
                raise ValueError("base.path is required with backend transformers")
            for m in self.models:
                if m.path and m.adapter:
                    raise ValueError(f"model {m.name!r}: give path (a full model or train folder) or adapter, not both")
        return self
