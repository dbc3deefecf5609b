"""Training numerics shared by every edray training loop: collate, loss, schedule, trainable selection.

Pure functions on rows, tensors and modules: no Ray, no file or network I/O. The fine-tuning loop in
:mod:`edray.train.job` and the student's pre-training recipe both use them, so the two loops cannot
drift apart (one definition of "which tokens carry the loss" and of "the loss").

Conventions:
- A *row* is a mapping with ``images`` (encoded image files, in placeholder order) and ``messages``
  (``[{role, content}]`` with ``<image>`` placeholders), as in :data:`edray.schemas.SUPPORT_SCHEMA`.
- The loss is carried by the assistant turns only (the answers); prompt, image and padding tokens
  get the label :data:`IGNORE_INDEX`.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100

# LoRA adapts the language model's attention projections only: a plain suffix list would also wrap
# the CLIP vision tower's q/k/v/out projections.
DEFAULT_LORA_TARGETS = r".*language_model.*\.(q|k|v|o)_proj"


class CollateError(ValueError):
    """A row cannot be turned into model inputs; the message names the row and the field."""


def decode_images(images: Sequence[bytes] | None, row_id: str = "?") -> list[Any]:
    """Decode encoded image files into RGB PIL images.

    Args:
        images: encoded image files (PNG, JPEG, ...), in placeholder order.
        row_id: the row's id, for error messages.

    Returns:
        One RGB ``PIL.Image`` per input.

    Raises:
        CollateError: an entry is not a decodable image.
    """
    from PIL import Image

    out = []
    for i, data in enumerate(images or []):
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except Exception as exc:  # PIL raises many unrelated types for corrupt files
            raise CollateError(f"row {row_id}: images[{i}] is not a readable image ({exc})") from None
        out.append(img.convert("RGB"))
    return out


def _normalize_messages(messages: Any, row_id: str) -> list[dict[str, str]]:
    if messages is None or len(messages) == 0:
        raise CollateError(f"row {row_id}: messages is empty")
    out = []
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise CollateError(f"row {row_id}: messages[{i}] needs role system/user/assistant and text content")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise CollateError(f"row {row_id}: messages has no assistant turn, so nothing carries the loss")
    return out


def _count_placeholders(messages: Sequence[Mapping[str, str]], placeholder: str) -> int:
    return sum(m["content"].count(placeholder) for m in messages)


def answer_spans(processor: Any, messages: Sequence[Mapping[str, str]], images: Sequence[Any]) -> tuple[
    list[int], list[tuple[int, int]]
]:
    """Tokenize one conversation and find the token spans of its assistant turns.

    Each assistant turn ``i`` spans from the end of the prompt ``messages[:i]`` rendered with the
    generation prompt to the end of ``messages[:i + 1]``; both prefixes go through the processor with
    the images they contain, so image-token expansion is counted exactly as in the full sequence.

    Args:
        processor: a transformers multimodal processor with a chat template (or a tokenizer, for
            text-only models).
        messages: the conversation, ``<image>`` placeholders included.
        images: decoded images, one per placeholder, in order.

    Returns:
        ``(input_ids, spans)``: the token ids of the full conversation and ``[start, end)`` spans of
        the assistant tokens.

    Raises:
        CollateError: a prompt prefix does not tokenize as a prefix of the full conversation.
    """
    placeholder = getattr(processor, "image_token", "<image>")

    def encode(msgs: Sequence[Mapping[str, str]], generation_prompt: bool) -> list[int]:
        text = processor.apply_chat_template(list(msgs), tokenize=False, add_generation_prompt=generation_prompt)
        n_img = _count_placeholders(msgs, placeholder)
        kwargs: dict[str, Any] = {"text": [text], "return_tensors": None}
        if n_img:
            kwargs["images"] = list(images[:n_img])
        enc = processor(**kwargs)
        ids = enc["input_ids"][0]
        return list(ids.tolist() if hasattr(ids, "tolist") else ids)

    full = encode(messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(encode(messages[:i], True)) if i else 0
        end = len(encode(messages[: i + 1], False))
        if end > len(full) or start > end:
            raise CollateError("a prompt prefix is not a prefix of the tokenized conversation")
        spans.append((start, end))
    return full, spans


def collate_rows(
    processor: Any,
    rows: Sequence[Mapping[str, Any]],
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Turn rows into one padded batch with answer-only labels.

    Args:
        processor: the student's processor (``AutoProcessor``), holding the chat template.
        rows: mappings with ``images`` (encoded bytes), ``messages`` and optionally ``id``.
        max_length: reject (raise) rows longer than this many tokens; truncating would cut image
            tokens or the answer, which the model cannot train on.

    Returns:
        ``input_ids``, ``attention_mask``, ``labels`` (``[batch, length]``, right-padded) and, when
        any row has images, ``pixel_values`` (one entry per image, in row order).

    Raises:
        CollateError: a row has no assistant turn, an unreadable image, a placeholder count that
            differs from its image count, or more than ``max_length`` tokens.
    """
    if not rows:
        raise CollateError("empty batch")
    tokenizer = getattr(processor, "tokenizer", processor)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    placeholder = getattr(processor, "image_token", "<image>")
    seqs: list[list[int]] = []
    labels: list[list[int]] = []
    all_images: list[Any] = []
    for row in rows:
        row_id = str(row.get("id", "?"))
        messages = _normalize_messages(row.get("messages"), row_id)
        images = decode_images(row.get("images"), row_id)
        n_ph = _count_placeholders(messages, placeholder)
        if n_ph != len(images):
            raise CollateError(f"row {row_id}: messages hold {n_ph} {placeholder} placeholders but images has {len(images)}")
        ids, spans = answer_spans(processor, messages, images)
        if max_length is not None and len(ids) > max_length:
            raise CollateError(f"row {row_id}: {len(ids)} tokens exceed max_length={max_length}")
        lab = [IGNORE_INDEX] * len(ids)
        for start, end in spans:
            lab[start:end] = ids[start:end]
        seqs.append(ids)
        labels.append(lab)
        all_images.extend(images)
    width = max(len(s) for s in seqs)
    batch = {
        "input_ids": torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], dtype=torch.long),
        "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], dtype=torch.long),
        "labels": torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for lab in labels], dtype=torch.long),
    }
    if all_images:
        pixels = processor.image_processor(all_images, return_tensors="pt")["pixel_values"]
        batch["pixel_values"] = pixels
    return batch


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy summed over answer tokens.

    Args:
        logits: ``[batch, length, vocab]`` model outputs.
        labels: ``[batch, length]`` with :data:`IGNORE_INDEX` outside the answers.

    Returns:
        ``(loss_sum, n_tokens)``: the summed loss (fp32) and the number of tokens it covers. Divide
        by the token count over the whole (accumulated, all-worker) batch for a per-token mean.
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    loss_sum = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    n_tokens = (shift_labels != IGNORE_INDEX).sum()
    return loss_sum, n_tokens


def mean_answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token mean of :func:`answer_loss` (zero when the batch has no answer tokens)."""
    loss_sum, n = answer_loss(logits, labels)
    return loss_sum / n.clamp(min=1)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: Literal["cosine", "linear", "constant"]) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based): linear warm-up, then decay to 0.

    Args:
        step: optimizer steps already taken.
        total_steps: optimizer steps of the whole run.
        warmup_steps: steps of linear warm-up from 0.
        schedule: decay after warm-up.

    Returns:
        A factor in ``[0, 1]``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def decoder_layer_index(name: str) -> int | None:
    """The decoder layer number in a language-model parameter name, or ``None``."""
    if "language_model" not in name:
        return None
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def layer_group(name: str) -> str:
    """A coarse group for per-group metrics: ``projector``, ``vision``, ``lm.layer_<i>``, ``lm.head`` or ``lm.other``."""
    if "multi_modal_projector" in name:
        return "projector"
    if "vision_tower" in name:
        return "vision"
    idx = decoder_layer_index(name)
    if idx is not None:
        return f"lm.layer_{idx}"
    if "lm_head" in name:
        return "lm.head"
    return "lm.other"


def select_full_trainable(
    model: torch.nn.Module,
    last_n_layers: int,
    train_projector: bool = True,
    train_vision: bool = False,
) -> list[str]:
    """Freeze everything, then unfreeze the projector and the last ``last_n_layers`` decoder layers.

    This is the ``full`` update scope of docs/method.md §2 (the public SPIDER code's scope): vision tower
    frozen, projector and the top of the language model trained.

    Args:
        model: a LLaVA-style model (parameter names contain ``multi_modal_projector``,
            ``vision_tower`` and ``language_model...layers.<i>``).
        last_n_layers: how many of the last decoder layers to train (0: none).
        train_projector: train the multimodal projector.
        train_vision: also train the vision tower.

    Returns:
        The names of the trainable parameters, in module order.

    Raises:
        ValueError: nothing would be trained.
    """
    indices = {decoder_layer_index(n) for n, _ in model.named_parameters()} - {None}
    n_layers = (max(indices) + 1) if indices else 0
    first = n_layers - min(last_n_layers, n_layers)
    names = []
    for name, p in model.named_parameters():
        idx = decoder_layer_index(name)
        train = (
            (idx is not None and idx >= first and last_n_layers > 0)
            or (train_projector and "multi_modal_projector" in name)
            or (train_vision and "vision_tower" in name)
        )
        p.requires_grad_(train)
        if train:
            names.append(name)
    if not names:
        raise ValueError("no trainable parameters: raise last_n_layers or enable train_projector")
    return names


def global_grad_norm(parameters: Sequence[torch.Tensor]) -> float:
    """L2 norm of all gradients (for metrics; clipping itself uses ``clip_grad_norm_``)."""
    norms = [p.grad.detach().float().norm() for p in parameters if p.grad is not None]
    if not norms:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(norms)))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor across the workers of the default process group, on the device its backend needs.

    NCCL (Ray Train's backend when workers have GPUs) reduces only CUDA tensors and gloo only CPU ones;
    bookkeeping tensors such as the loss accumulator live on the CPU in float64. The tensor is moved to
    the backend's device, reduced, and returned on its own device. Outside a process group it is
    returned unchanged.

    Args:
        tensor: the local values.

    Returns:
        The sum over workers, with ``tensor``'s device and dtype.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    if dist.get_backend() == "nccl":
        target = torch.device("cuda", torch.cuda.current_device())
    else:
        target = torch.device("cpu")
    moved = tensor.to(target)
    dist.all_reduce(moved)
    return moved.to(tensor.device)
