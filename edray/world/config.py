"""Configuration of the skills world: scenes, the supporting pool, evaluation splits and the teacher.

``edray config show world`` prints every field with its description. The method's open numbers
(how strongly the teacher's belief moves after a wrong step, how noisy it is) are fields here, never
constants in code.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from edray.config import EdrayModel


DEFAULT_POOL_MIX = {"vertical_position": 0.075, "attribute_binding": 0.15, "count_comparison": 0.15}
"""The pool's default weights: the default student's gap skills (edray.world.pretrain.DEFAULT_GAPS) at about
2.5 % of the rows each (vertical position has more source tasks, so a lower weight)."""


class SceneConfig(EdrayModel):
    """How scenes are drawn. Defaults are what the tiny student can learn on CPU: a 2x2 grid of 16 px
    cells on a 32 px image, so each large object (14 px) covers whole 8 px patches."""

    image_size: int = Field(32, ge=16, le=512, description="Image width and height in pixels.")
    grid: int = Field(2, ge=2, le=4, description="Cells per side; objects sit one per cell, centred.")
    min_objects: int = Field(1, ge=1, le=6, description="Fewest objects in a scene.")
    max_objects: int = Field(4, ge=1, le=6, description="Most objects in a scene (at most grid*grid).")
    large_fraction: float = Field(0.875, gt=0.3, le=1.0, description="Large object side as a fraction of the cell side.")
    small_fraction: float = Field(0.5, gt=0.1, lt=1.0, description="Small object side as a fraction of the cell side.")

    @model_validator(mode="after")
    def _check(self) -> "SceneConfig":
        if self.max_objects < self.min_objects:
            raise ValueError(f"max_objects ({self.max_objects}) < min_objects ({self.min_objects})")
        if self.max_objects > self.grid * self.grid:
            raise ValueError(f"max_objects ({self.max_objects}) exceeds grid*grid ({self.grid * self.grid}) cells")
        if self.image_size % self.grid:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of grid ({self.grid})")
        if self.small_fraction >= self.large_fraction:
            raise ValueError("small_fraction must be below large_fraction")
        return self


class PoolConfig(EdrayModel):
    """The task-agnostic supporting pool (the Vision-Flan stand-in)."""

    pool_size: int = Field(20_000, ge=1, le=100_000_000, description="Rows to generate.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Pool seed; row i depends only on (seed, i, mix, scene).")
    mix: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_POOL_MIX),
        description=(
            "Relative weights by skill or source-task name (default 1 each). A task's weight is its own "
            "weight times the weights of its skills. The default makes the student's designed gaps scarce "
            "(about 2.4 % of the rows each), so the budget matters: random draws few gap rows and the full "
            "pool dilutes them. {} gives every source task weight 1."
        ),
    )
    formats: list[str] = Field(default_factory=lambda: ["parquet"], description="Output formats: parquet and/or lance.")
    batch_size: int = Field(2048, ge=16, le=1_000_000, description="Rows generated per Ray Data batch.")
    rows_per_file: int = Field(200_000, ge=1_000, le=10_000_000, description="Upper bound on rows per Parquet file.")
    num_cpus: float = Field(1.0, gt=0.0, le=64.0, description="CPUs reserved per generation task.")

    @model_validator(mode="after")
    def _check(self) -> "PoolConfig":
        bad = [f for f in self.formats if f not in ("parquet", "lance")]
        if bad or not self.formats:
            raise ValueError(f"formats must be a non-empty subset of [parquet, lance], got {self.formats}")
        neg = [k for k, v in self.mix.items() if v < 0]
        if neg:
            raise ValueError(f"mix weights must be >= 0: {neg}")
        from edray.world.skills import SKILL_NAMES  # imported here: the task modules import this one
        from edray.world.tasks import SOURCE_TASK_BY_NAME

        unknown = sorted(k for k in self.mix if k not in SKILL_NAMES and k not in SOURCE_TASK_BY_NAME)
        if unknown:
            raise ValueError(f"mix: unknown skill or source-task names {unknown}; skills: {', '.join(SKILL_NAMES)}")
        return self


class EvalConfig(EdrayModel):
    """Target tasks (validation and test splits on disjoint scenes) and the general suite."""

    seed: int = Field(1, ge=0, le=2**31 - 1, description="Seed of the evaluation splits (independent of the pool seed).")
    val_size: int = Field(1000, ge=1, le=1_000_000, description="Validation rows per target task.")
    test_size: int = Field(1000, ge=1, le=1_000_000, description="Test rows per target task.")
    general_size: int = Field(1200, ge=1, le=1_000_000, description="Rows per split of the general suite (all skills).")
    target_tasks: list[str] = Field(
        default_factory=list, description="Target tasks to write; empty means all of them."
    )

    @model_validator(mode="after")
    def _check(self) -> "EvalConfig":
        from edray.world.tasks import TARGET_TASK_BY_NAME

        unknown = [t for t in self.target_tasks if t not in TARGET_TASK_BY_NAME]
        if unknown:
            raise ValueError(f"unknown target tasks {unknown}; known: {', '.join(TARGET_TASK_BY_NAME)}")
        return self


class TeacherNoise(EdrayModel):
    """Imperfections of the world teacher, to test how the pipeline copes with a real one."""

    wrong_step: float = Field(0.0, ge=0.0, le=1.0, description="Probability that the belief shift lands on a neighbouring step.")
    wrong_skill: float = Field(0.0, ge=0.0, le=1.0, description="Probability of naming another skill than the true one.")
    malformed: float = Field(0.0, ge=0.0, le=1.0, description="Probability of an unparseable reply.")
    slow: float = Field(0.0, ge=0.0, le=1.0, description="Probability of a slow reply.")
    slow_seconds: float = Field(0.5, ge=0.0, le=60.0, description="Extra latency of a slow reply.")
    failed: float = Field(0.0, ge=0.0, le=1.0, description="Probability of failing with status 503.")
    per_attempt: bool = Field(
        True,
        description="Draw failures, slowness and malformed replies anew for every attempt of a request, as an "
        "overloaded server does (retries can succeed); false makes each request fail the same way every time.",
    )


class TeacherConfig(EdrayModel):
    """The world teacher: an oracle with privileged access to the scene graph in each image."""

    model_id: str = Field("world-teacher", min_length=1, description="Model name the teacher answers to.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of paraphrase choice and noise.")
    confident: float = Field(
        0.85, gt=0.5, lt=1.0, description="Probability the teacher gives the believed answer after enough evidence."
    )
    settle_steps: int = Field(
        2, ge=1, le=20, description="Correct steps after which the belief in the hinted option reaches `confident`."
    )
    noise: TeacherNoise = Field(default_factory=TeacherNoise, description="Imperfections.")


class WorldConfig(EdrayModel):
    """The skills world: offline benchmark data and its teacher."""

    scene: SceneConfig = Field(default_factory=SceneConfig, description="Scene rendering.")
    pool: PoolConfig = Field(default_factory=PoolConfig, description="Supporting pool.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Target tasks and general suite.")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="World teacher.")
