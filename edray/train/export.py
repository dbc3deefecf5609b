"""Trained weights as folders transformers (and vLLM, for adapters) load as they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edray.schemas import TRAIN_ADAPTER, TRAIN_MODEL
from edray.train.config import TrainConfig


def export_model(model: Any, processor: Any, cfg: TrainConfig, out: Path) -> None:
    """Write the trained weights as a folder transformers (and vLLM, for adapters) loads as is."""
    if cfg.mode == "lora":
        target = out / TRAIN_ADAPTER
        model.save_pretrained(target, safe_serialization=True)
    else:
        target = out / TRAIN_MODEL
        model.save_pretrained(target, safe_serialization=True)
    processor.save_pretrained(target)


def merge_adapter(base: str, adapter: str, out: Path) -> Path:
    """Merge a peft LoRA adapter into its base model and save the result (with the base's processor).

    Returns:
        ``out``, a model folder transformers loads.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    net = AutoModelForImageTextToText.from_pretrained(base, use_safetensors=True, trust_remote_code=False, dtype=torch.float32)
    merged = PeftModel.from_pretrained(net, adapter).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    AutoProcessor.from_pretrained(base, trust_remote_code=False).save_pretrained(out)
    return out
