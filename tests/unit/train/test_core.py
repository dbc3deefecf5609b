"""Shared training numerics: answer-only labels, loss, schedule, trainable scope (no Ray)."""

from __future__ import annotations

import io
import math

import pytest
import torch

from edray.train.core import (
    IGNORE_INDEX,
    CollateError,
    answer_loss,
    collate_rows,
    decoder_layer_index,
    layer_group,
    lr_factor,
    mean_answer_loss,
    select_full_trainable,
)


def _png(value: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (value, value, value)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def processor(train_student):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(train_student)


def _answer_text(processor, batch, i: int) -> str:
    ids = [t for t, lab in zip(batch["input_ids"][i].tolist(), batch["labels"][i].tolist()) if lab != IGNORE_INDEX]
    return processor.tokenizer.decode(ids)


def test_labels_cover_assistant_turns_only(processor) -> None:
    rows = [
        {"id": "a", "images": [_png(10)], "messages": [
            {"role": "user", "content": "<image>What color is the square?"},
            {"role": "assistant", "content": "red"}]},
        {"id": "b", "images": [_png(200), _png(3)], "messages": [
            {"role": "user", "content": "<image><image>Is there a circle?"},
            {"role": "assistant", "content": "yes"},
            {"role": "user", "content": "What color is the circle?"},
            {"role": "assistant", "content": "blue"}]},
    ]
    batch = collate_rows(processor, rows)
    assert batch["pixel_values"].shape[0] == 3  # one entry per image, in row order
    eos = processor.tokenizer.eos_token
    assert _answer_text(processor, batch, 0).replace(" ", "") == f"red{eos}"
    assert _answer_text(processor, batch, 1).replace(" ", "") == f"yes{eos}blue{eos}"
    # padding is masked and has attention 0
    short = int(batch["attention_mask"][0].sum())
    assert (batch["labels"][0, short:] == IGNORE_INDEX).all()
    assert (batch["attention_mask"][0, short:] == 0).all()
    # image tokens never carry loss
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert not ((batch["input_ids"] == image_id) & (batch["labels"] != IGNORE_INDEX)).any()


def test_bad_rows_name_the_row_and_field(processor) -> None:
    q = {"role": "user", "content": "<image>What color?"}
    with pytest.raises(CollateError, match=r"row x: images\[0\] is not a readable image"):
        collate_rows(processor, [{"id": "x", "images": [b"junk"], "messages": [q, {"role": "assistant", "content": "red"}]}])
    with pytest.raises(CollateError, match="row y: messages hold 1 <image> placeholders but images has 0"):
        collate_rows(processor, [{"id": "y", "images": [], "messages": [q, {"role": "assistant", "content": "red"}]}])
    with pytest.raises(CollateError, match="row z: messages has no assistant turn"):
        collate_rows(processor, [{"id": "z", "images": [_png(1)], "messages": [q]}])
    with pytest.raises(CollateError, match="exceed max_length=8"):
        collate_rows(processor, [{"id": "w", "images": [_png(1)], "messages": [q, {"role": "assistant", "content": "red"}]}], max_length=8)


def test_answer_loss_matches_hand_computation() -> None:
    # uniform logits over 4 classes: each counted token costs log(4); only positions with labels count
    logits = torch.zeros(1, 4, 4)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 2, 3]])
    loss_sum, n = answer_loss(logits, labels)
    assert int(n) == 2 and float(loss_sum) == pytest.approx(2 * math.log(4))
    assert float(mean_answer_loss(logits, labels)) == pytest.approx(math.log(4))
    # a confident correct prediction for the token at position 3 (predicted from position 2)
    logits[0, 2, 3] = 100.0
    assert float(answer_loss(logits, labels)[0]) == pytest.approx(math.log(4), abs=1e-4)


def test_lr_factor_warmup_then_decay() -> None:
    assert [lr_factor(s, 10, 2, "cosine") for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(2, 10, 2, "cosine") == pytest.approx(1.0)
    assert lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_factor(10, 10, 2, "cosine") == pytest.approx(0.0)
    assert lr_factor(6, 10, 2, "linear") == pytest.approx(0.5)
    assert lr_factor(9, 10, 0, "constant") == 1.0


def test_full_scope_trains_projector_and_last_layers_only(train_student) -> None:
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(train_student)
    names = select_full_trainable(model, last_n_layers=1)
    assert names and all("multi_modal_projector" in n or "language_model.layers.1." in n for n in names)
    assert any("multi_modal_projector" in n for n in names)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any("vision_tower" in n for n in frozen) and any("layers.0." in n for n in frozen)
    with pytest.raises(ValueError, match="no trainable parameters"):
        select_full_trainable(model, last_n_layers=0, train_projector=False)


def test_layer_groups() -> None:
    assert layer_group("model.multi_modal_projector.linear_1.weight") == "projector"
    assert layer_group("model.vision_tower.encoder.layers.0.mlp.fc1.weight") == "vision"
    assert layer_group("model.language_model.layers.3.self_attn.q_proj.weight") == "lm.layer_3"
    assert decoder_layer_index("model.vision_tower.encoder.layers.0.mlp.fc1.weight") is None
    assert layer_group("lm_head.weight") == "lm.head"


def test_all_reduce_sum_keeps_the_tensor_where_it_was(tmp_path) -> None:
    import torch.distributed as dist

    from edray.train.core import all_reduce_sum

    local = torch.tensor([2.0, 4.0], dtype=torch.float64)
    assert all_reduce_sum(local) is local  # outside a process group: unchanged
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        out = all_reduce_sum(local)
        assert out.device.type == "cpu" and out.dtype == torch.float64 and out.tolist() == [2.0, 4.0]
    finally:
        dist.destroy_process_group()
