"""Configuration of the dataset readers (``edray data inspect`` and every stage that reads samples)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from edray.config import EdrayModel
from edray.schemas import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, MAX_TEXT_CHARS, MAX_TURNS

FORMATS = ("auto", "parquet", "jsonl", "llava", "hf", "lance")
Format = Literal["auto", "parquet", "jsonl", "llava", "hf", "lance"]
Kind = Literal["support", "eval"]


class ReadConfig(EdrayModel):
    """How a dataset is read, validated and normalized to ``SUPPORT_SCHEMA`` / ``EVAL_SCHEMA``."""

    format: Format = Field(
        "auto",
        description="Input format: auto (detected from the path), parquet, jsonl, llava, hf, lance.",
    )
    kind: Kind = Field("support", description="support: supporting-pool samples; eval: evaluation samples.")
    max_image_bytes: int = Field(
        MAX_IMAGE_BYTES, ge=1, le=1 << 30, description="Largest encoded image accepted, in bytes."
    )
    max_image_pixels: int = Field(
        MAX_IMAGE_PIXELS, ge=1, le=1 << 31, description="Largest image accepted, in pixels (width x height)."
    )
    max_images: int = Field(16, ge=0, le=1024, description="Most images accepted in one sample.")
    max_text_chars: int = Field(
        MAX_TEXT_CHARS, ge=1, le=1 << 26, description="Longest text accepted in one message or answer, in characters."
    )
    max_turns: int = Field(MAX_TURNS, ge=1, le=4096, description="Most chat turns accepted in one sample.")
    decode_images: bool = Field(
        True,
        description="Decode every image with PIL to reject corrupt files and check the pixel count "
        "(off: only the byte size and the file signature are checked).",
    )
    insert_missing_placeholders: bool = Field(
        True,
        description="When a sample has images but no <image> placeholder at all, put one placeholder per "
        "image at the start of the first user turn (the LLaVA convention). Off: such samples are quarantined.",
    )
    image_root: Optional[str] = Field(
        None,
        description="Folder that relative image paths are resolved against (default: the data file's folder).",
    )
    source_task: Optional[str] = Field(
        None,
        description="source_task for records that carry none (default: the data file's name without suffix).",
    )
    split: str = Field(
        "validation",
        min_length=1,
        max_length=64,
        description="split for evaluation records that carry none (a Hugging Face DatasetDict uses its split names).",
    )
    batch_rows: int = Field(256, ge=1, le=65536, description="Rows per normalized batch produced by a read task.")
    # 0.5, not the 0.25 of the index's validation tasks and annotators: Ray Data fuses consecutive operators
    # whose resources are equal, and a read fused into the annotator actor reads every file serially there
    # and hands the writer whole files (one commit at the end instead of one per commit_rows).
    num_cpus: float = Field(
        0.5,
        gt=0,
        le=64,
        description="CPUs Ray reserves per read task. Reading is light next to annotation and embedding, and a "
        "whole CPU per task would starve the actor pools of a small machine.",
    )
    chunk_bytes: int = Field(
        128 << 20,
        ge=1 << 10,
        le=1 << 34,
        description="JSONL files larger than this are read by several tasks, one byte range each.",
    )
    raw_chars: int = Field(
        2000, ge=0, le=1 << 20, description="Characters of the offending raw record kept in the quarantine table."
    )
