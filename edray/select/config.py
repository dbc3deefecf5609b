"""Configuration of the select stage (docs/method.md §1 step 5 and §3).

``edray config show select`` prints every field with its description.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from edray.config import EdrayModel


class ContaminationConfig(EdrayModel):
    """Exclude supporting samples that nearly duplicate a validation or test sample of the target task."""

    enabled: bool = Field(True, description="Apply the guard.")
    evaluation: list[str] = Field(
        default_factory=list,
        description="Parquet files or folders (EVAL_SCHEMA) of the target task's validation and test splits; "
        "the diagnose stage's validation set is always included.",
    )
    rule: Literal["both", "either", "image", "instruction"] = Field(
        "both",
        description="both: same image and same instruction (samples without images: instruction alone); "
        "either: one of them; image or instruction: that one only.",
    )
    max_hash_distance: int = Field(
        2, ge=0, le=64, description="Largest Hamming distance between 64-bit average image hashes that counts as the same image."
    )
    min_instruction_similarity: float = Field(
        0.9, ge=0.0, le=1.0, description="Smallest word Jaccard similarity that counts as the same instruction."
    )


class SelectConfig(EdrayModel):
    """The select stage: supporting samples that teach the missing skills, filled to a budget."""

    round: int = Field(0, ge=0, le=1000, description="Round k; reads round_<k>/diagnose, writes round_<k>/select.")
    index_dir: Optional[str] = Field(
        None, max_length=4096, description="Completed index stage folder (default: <run-dir>/index)."
    )
    diagnose_dir: Optional[str] = Field(
        None, max_length=4096, description="Completed diagnose stage folder (default: <run-dir>/round_<k>/diagnose)."
    )
    strategy: Literal["error_driven", "random", "insta", "full", "validation"] = Field(
        "error_driven",
        description="error_driven (the method) or a baseline at the same budget: random, insta (instruction "
        "similarity to the target task), full (the whole pool), validation (tune on the validation set).",
    )
    unit: Literal["gap", "error"] = Field(
        "gap", description="Retrieve per capability gap (clustered skills) or per error (one query per error)."
    )
    query: Literal["skill", "phrases", "step"] = Field(
        "skill",
        description="skill: the gap's representative phrase; phrases: every phrase of the gap, fused by rank; "
        "step: the raw erroneous step (the paper's 'without skill analysis' ablation).",
    )
    mode: Literal["bm25", "dense", "hybrid"] = Field(
        "bm25", description="Retrieval: bm25 (the paper), dense, or hybrid (reciprocal-rank fusion of both)."
    )
    budget: Optional[int] = Field(1000, ge=0, le=1_000_000_000, description="Samples to select (absolute).")
    budget_fraction: Optional[float] = Field(
        None, gt=0.0, le=1.0, description="Samples to select as a fraction of the pool (set budget to null)."
    )
    allocation: Literal["proportional", "uniform"] = Field(
        "proportional", description="Split of the budget across gaps: by their error counts, or evenly."
    )
    replay_share: float = Field(
        0.0, ge=0.0, le=1.0, description="Share of the budget drawn uniformly from the pool (docs/method.md §3 replay)."
    )
    overfetch: float = Field(
        3.0, ge=1.0, le=100.0, description="Candidates retrieved per query, as a multiple of the query's quota."
    )
    min_candidates: int = Field(50, ge=1, le=1_000_000, description="Fewest candidates retrieved per query.")
    max_candidates: int = Field(
        100_000, ge=1, le=100_000_000, description="Most candidates retrieved per query (grows up to this when short)."
    )
    fill_shortfall: Literal["random", "leave"] = Field(
        "random",
        description="When retrieval yields fewer distinct samples than the budget: fill the rest uniformly from "
        "the pool (recorded as such), or leave the selection short.",
    )
    rrf_k: int = Field(60, ge=1, le=10_000, description="Fusion constant when several queries or retrievers are fused.")
    candidates: int = Field(100, ge=1, le=100_000, description="Rows each retriever contributes to a hybrid fusion.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of random draws (replay, random baseline, shortfall).")
    contamination: ContaminationConfig = Field(
        default_factory=ContaminationConfig, description="Near-duplicate guard against the target task's evaluation data."
    )

    @model_validator(mode="after")
    def _one_budget(self) -> "SelectConfig":
        if (self.budget is None) == (self.budget_fraction is None):
            raise ValueError("set exactly one of budget and budget_fraction (set the other to null)")
        return self
