"""Configuration of the train stage (``edray config show train``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edray.config import EdrayModel
from edray.train.core import DEFAULT_LORA_TARGETS


class LoraConfig(EdrayModel):
    """LoRA adapter settings (``mode: lora``)."""

    rank: int = Field(16, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(32.0, gt=0, le=4096, description="LoRA alpha; the update is scaled by alpha / rank.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    targets: str = Field(
        DEFAULT_LORA_TARGETS,
        min_length=1,
        description=(
            "Regex over full module names that get adapters. The default adapts the language model's "
            "attention projections and leaves the vision tower alone."
        ),
    )
    train_projector: bool = Field(
        False, description="Also train the multimodal projector in full (saved via peft modules_to_save)."
    )


class FullConfig(EdrayModel):
    """Scope of full-weight updates (``mode: full`` and ``mode: spider``)."""

    last_n_layers: int = Field(
        4, ge=0, le=1024, description="Train the last N decoder layers of the language model (all of them if N exceeds the count)."
    )
    train_projector: bool = Field(True, description="Train the multimodal projector.")
    train_vision: bool = Field(False, description="Train the vision tower too (frozen by default, as in SPIDER's public code).")


class OptimConfig(EdrayModel):
    """AdamW, learning-rate schedule and clipping."""

    lr: float = Field(2e-4, gt=0, le=1.0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, le=1.0, description="AdamW decoupled weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    eps: float = Field(1e-8, gt=0, le=1e-2, description="AdamW epsilon.")
    warmup_steps: int = Field(10, ge=0, le=1_000_000, description="Optimizer steps of linear warm-up from 0.")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warm-up (to 0 at the last step).")
    max_grad_norm: float = Field(1.0, ge=0, le=1e6, description="Clip the global gradient norm to this value (0: no clipping).")


class TrainConfig(EdrayModel):
    """The train stage: fine-tune the student on the selected supporting samples with Ray Train."""

    mode: Literal["lora", "full", "spider"] = Field(
        "lora",
        description=(
            "lora: peft adapters on the language model; full: projector + last N decoder layers; "
            "spider: full plus SPIDER's importance-discrepancy mask after every step (docs/method.md §2)."
        ),
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings.")
    full: FullConfig = Field(default_factory=FullConfig, description="Full / SPIDER update scope.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimizer and schedule.")
    epochs: int = Field(1, ge=1, le=1000, description="Passes over the selection.")
    max_steps: int | None = Field(
        None, ge=1, le=10_000_000, description="Stop after this many optimizer steps (default: epochs over the data)."
    )
    batch_size: int = Field(8, ge=1, le=4096, description="Micro-batch size per worker.")
    grad_accum: int = Field(1, ge=1, le=1024, description="Micro-batches accumulated per optimizer step.")
    max_length: int = Field(1024, ge=16, le=131072, description="Samples longer than this many tokens are an error (never truncated).")
    seed: int = Field(0, ge=0, description="Seed of data order, initialization of adapters and dropout.")
    num_workers: int = Field(1, ge=1, le=1024, description="Ray Train workers (data-parallel replicas).")
    runner: Literal["auto", "ray_train", "in_process"] = Field(
        "auto",
        description=(
            "Where the loop runs. ray_train: a TorchTrainer worker group (restarts failed workers up to "
            "max_failures). in_process: the calling process, for one CPU worker; no distributed start-up, "
            "resumes from its checkpoints when re-run. auto: in_process for one CPU worker, else ray_train."
        ),
    )
    use_gpu: bool = Field(False, description="One GPU per worker; bf16 autocast with fp32 master weights.")
    cpus_per_worker: float = Field(1.0, gt=0, le=256, description="Logical CPUs reserved per worker (fractions allowed).")
    torch_threads: int | None = Field(None, ge=1, le=256, description="torch threads per worker (default: torch's choice).")
    checkpoint_every: int = Field(50, ge=1, le=10_000_000, description="Save a resumable checkpoint every k optimizer steps.")
    keep_checkpoints: int = Field(2, ge=1, le=100, description="How many recent checkpoints Ray Train keeps.")
    max_failures: int = Field(1, ge=0, le=100, description="Worker-group failures tolerated; each restarts from the latest checkpoint.")
    log_every: int = Field(1, ge=1, le=100_000, description="Print a progress line every k optimizer steps (metrics are recorded every step).")
    storage_path: str | None = Field(
        None,
        description=(
            "Where Ray Train keeps checkpoints (a shared filesystem or s3:// URI on a cluster). Default: a "
            "folder beside the stage folder, so that re-running the same command resumes an interrupted run."
        ),
    )
    trust_remote_code: bool = Field(False, description="Allow custom model code from the student folder.")

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.mode in ("full", "spider") and self.full.last_n_layers == 0 and not self.full.train_projector and not self.full.train_vision:
            raise ValueError("full/spider mode trains nothing: set full.last_n_layers > 0 or full.train_projector")
        if self.runner == "in_process" and (self.num_workers > 1 or self.use_gpu):
            raise ValueError("runner: in_process runs one CPU worker; use ray_train (or auto) for num_workers > 1 or use_gpu")
        return self

    @property
    def in_process(self) -> bool:
        """Whether the loop runs in the calling process (see ``runner``)."""
        return self.runner == "in_process" or (self.runner == "auto" and self.num_workers == 1 and not self.use_gpu)
