"""The student as the train stage builds it: loaded in fp32, with only the configured parameters trainable.

:func:`build_model` can keep the last loaded student in memory (``share=True``) and hand out copies, so
that many small arms trained one after another in one process (the arm runner's in-process arms) load
the base student from disk once.
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

from edray.rundir import version_stamp
from edray.train.config import TrainConfig

# Students up to this many bytes of weights are kept in memory to be copied per arm; a larger one is
# loaded afresh every time (a kept copy would double its memory).
SHARE_MAX_BYTES = 1 << 30

_lock = threading.Lock()
_shared: dict[tuple[Any, ...], tuple[Any, Any]] = {}


def load_student(student: str, trust_remote_code: bool = False, share: bool = False) -> tuple[Any, Any]:
    """The student model (fp32, CPU) and its processor.

    With ``share`` the last loaded student stays in memory and every call returns a deep copy of it
    (keyed by :func:`edray.rundir.version_stamp` of the folder, so changed weights are loaded afresh),
    unless its weights exceed :data:`SHARE_MAX_BYTES`.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    def load() -> tuple[Any, Any]:
        processor = AutoProcessor.from_pretrained(student, trust_remote_code=trust_remote_code)
        # fp32 master weights in every mode; bf16 only inside autocast (docs/method.md §2: SPIDER state in fp32)
        model = AutoModelForImageTextToText.from_pretrained(student, trust_remote_code=trust_remote_code, dtype=torch.float32)
        return model, processor

    weights = sum(f.stat().st_size for f in Path(student).glob("*.safetensors"))
    if not share or weights > SHARE_MAX_BYTES:
        return load()
    key = (version_stamp(student), trust_remote_code)
    with _lock:
        if key not in _shared:
            _shared.clear()
            _shared[key] = load()
        model, processor = _shared[key]
        return copy.deepcopy(model), processor


def build_model(cfg: TrainConfig, student: str, share: bool = False) -> tuple[Any, Any]:
    """Load the student and make only the configured parameters trainable (LoRA wraps it in peft)."""
    from edray.train.core import select_full_trainable

    model, processor = load_student(student, cfg.trust_remote_code, share=share)
    if cfg.mode == "lora":
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(
            r=cfg.lora.rank,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.targets,
            modules_to_save=["multi_modal_projector"] if cfg.lora.train_projector else None,
            bias="none",
        )
        model = get_peft_model(model, lcfg)
    else:
        select_full_trainable(model, cfg.full.last_n_layers, cfg.full.train_projector, cfg.full.train_vision)
    return model, processor
