"""The tiny student: tokenizer, chat template, processor shapes, forward/backward, label masking."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from edray.train.core import IGNORE_INDEX, collate_rows, mean_answer_loss
from edray.world.student import (
    EOS_TOKEN,
    StudentConfig,
    build_processor,
    build_student,
    build_tokenizer,
    legacy_key,
)

TEXTS = [
    "<image>\nWhat color is the square?",
    "Step 1: The square is red.\nAnswer: red",
    "<image>\nIs there a blue circle? Answer yes or no.",
    "Step 1: There is no blue circle.\nAnswer: no",
    "<image>\nHow many objects are there? (A) 1 (B) 2 (C) 3",
    "Answer: B",
]


def _png(color: tuple[int, int, int], size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def _row(i: int, question: str, answer: str) -> dict:
    return {
        "id": f"r{i}",
        "images": [_png((40 * i % 255, 0, 0))],
        "messages": [{"role": "user", "content": f"<image>\n{question}"}, {"role": "assistant", "content": answer}],
    }


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TEXTS)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_student(tmp_path_factory.mktemp("student"), StudentConfig.ci(), TEXTS)


def test_tokenizer_round_trips_text_with_image_placeholder(tokenizer):
    for text in ["<image>\nWhat color is the square?", "Step 1: The square is red.\nAnswer: red", "(A) 1 (B) 2"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text
    ids = tokenizer("<image><image>", add_special_tokens=False)["input_ids"]
    assert ids == [tokenizer.convert_tokens_to_ids("<image>")] * 2


def test_tokenizer_unknown_word_becomes_unk(tokenizer):
    ids = tokenizer("What color is the zebra?", add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.unk_token_id) == 1


def test_tokenizer_rejects_empty_corpus():
    with pytest.raises(ValueError, match="no texts"):
        build_tokenizer(["", ""])


def test_chat_template_renders_roles_and_generation_prompt(tokenizer):
    msgs = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "<image>\nWhat color is the square?"}]
    prompt = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert prompt == "<bos><|system|>Answer briefly.<eos><|user|><image>\nWhat color is the square?<eos><|assistant|>"
    full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": "red"}], tokenize=False)
    assert full.startswith(prompt) and full.endswith("red" + EOS_TOKEN)
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is the square?"}]}]
    assert tokenizer.apply_chat_template(parts, tokenize=False) == "<bos><|user|><image>\nWhat color is the square?<eos>"


def test_processor_expands_image_to_configured_token_count(tokenizer):
    cfg = StudentConfig(image_size=32, patch_size=8)
    proc = build_processor(cfg, tokenizer)
    img = Image.new("RGB", (50, 40), (255, 0, 0))
    enc = proc(text=["<image>\nWhat color is the square?"], images=[img], return_tensors="pt")
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert int((enc["input_ids"] == image_id).sum()) == cfg.image_tokens == 16
    assert tuple(enc["pixel_values"].shape) == (1, 3, 32, 32)


def test_config_rejects_head_size_below_32_and_misaligned_patches():
    with pytest.raises(ValueError, match="head size"):
        StudentConfig(text_hidden=64, text_heads=4)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        StudentConfig(image_size=30, patch_size=8)


def test_saved_folder_uses_layout_both_loaders_read(tiny_dir):
    from safetensors import safe_open

    with safe_open(str(tiny_dir / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("vision_tower.vision_model.") for k in keys)
    assert any(k.startswith("language_model.model.layers.") for k in keys)
    assert "language_model.lm_head.weight" in keys
    assert not any(k.startswith("model.") for k in keys)
    assert legacy_key("model.vision_tower.encoder.layers.0.mlp.fc1.weight") == "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"
    assert legacy_key("vision_tower.vision_model.post_layernorm.bias") == "vision_tower.vision_model.post_layernorm.bias"


def test_folder_loads_and_trains_one_step_with_answer_only_labels(tiny_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    fresh = build_student(tiny_dir.parent / "again", StudentConfig.ci(), TEXTS)
    again = AutoModelForImageTextToText.from_pretrained(fresh)
    # Same config and seed give the same weights, and every saved weight was loaded (not re-initialized).
    for (name, p), (_, q) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(p, q), name
    rows = [_row(1, "What color is the square?", "red"), _row(2, "How many objects are there? (A) 1 (B) 2", "Step 1: There is no blue circle.\nAnswer: B")]
    batch = collate_rows(proc, rows)
    labels, ids = batch["labels"], batch["input_ids"]
    tok = proc.tokenizer
    for i, answer in enumerate(["red", "Step 1: There is no blue circle.\nAnswer: B"]):
        kept = ids[i][labels[i] != IGNORE_INDEX].tolist()
        assert tok.decode(kept) == answer + EOS_TOKEN
    assert (labels[ids == tok.convert_tokens_to_ids("<image>")] == IGNORE_INDEX).all()
    model.train()
    out = model(**{k: v for k, v in batch.items() if k != "labels"})
    loss = mean_answer_loss(out.logits, labels)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert any("vision_tower" in n and g.abs().sum() > 0 for n, g in grads.items())
    assert any("lm_head" in n and g.abs().sum() > 0 for n, g in grads.items())
    assert torch.isfinite(loss) and loss.item() > 0


def _eval_row(i: int, question: str, answer: str, answer_type: str, skill: str, choices=None) -> dict:
    import json

    row = _row(i, question, answer)
    row.update(
        answer=answer, answer_type=answer_type, choices=choices, source_task=skill,
        metadata=json.dumps({"world": {"skills": [skill]}}), skills=None,
    )
    return row


def test_evaluate_student_scores_every_row_per_skill(tiny_dir):
    from edray.world.student_eval import evaluate_student

    rows = [
        _eval_row(1, "What color is the square?", "red", "open", "color_recognition"),
        _eval_row(2, "What color is the square?", "blue", "open", "color_recognition"),
        _eval_row(3, "Is there a blue circle? Answer yes or no.", "no", "yes_no", "color_existence", ["yes", "no"]),
    ]
    report = evaluate_student(tiny_dir, rows, batch_size=2, max_new_tokens=6, restricted=True)
    assert report.counts == {"color_existence": 1, "color_recognition": 2}
    assert len(report.predictions) == 3
    for p in report.predictions:
        assert p["correct"] == (p["prediction"].strip().lower() == p["gold"])
    assert report.overall == sum(p["correct"] for p in report.predictions) / 3
    assert report.per_skill["color_recognition"] == sum(p["correct"] for p in report.predictions[:2]) / 2
    # Restricted argmax always picks one of the possible answers, so each row gets a verdict.
    assert all(isinstance(p["restricted_correct"], bool) for p in report.predictions)
    assert set(report.restricted) == {"color_existence", "color_recognition"}


def test_pretrain_encoding_pads_back_to_the_shared_collate(tiny_dir):
    from transformers import AutoProcessor

    from edray.world.pretrain import _encode_rows, _pad_batch

    proc = AutoProcessor.from_pretrained(tiny_dir)
    rows = [_row(1, "What color is the square?", "red"), _row(2, "Is there a blue circle?", "Step 1: There is no blue circle.\nAnswer: no")]
    ref = collate_rows(proc, rows)
    batch = _pad_batch(_encode_rows(proc, rows, 128, chunk=1), proc.tokenizer.pad_token_id)
    for key in ("input_ids", "attention_mask", "labels", "pixel_values"):
        assert torch.equal(batch[key], ref[key]), key


def test_pretrain_config_rejects_image_size_mismatch():
    from edray.world.pretrain import PretrainConfig

    with pytest.raises(ValueError, match="patch-aligned"):
        PretrainConfig(scene={"image_size": 64, "grid": 2})
    assert PretrainConfig.ci().student.text_hidden == 64


def test_patch_targets_label_the_patches_of_each_objects_cell() -> None:
    import json

    import torch

    from edray.world.pretrain import patch_targets
    from edray.world.scene import COLORS, SHAPES, SIZES

    scene = {
        "grid": 2,
        "image_size": 32,
        "objects": [
            {"row": 0, "col": 1, "color": "red", "shape": "square", "size": "large"},
            {"row": 1, "col": 0, "color": "blue", "shape": "cross", "size": "small"},
        ],
    }
    t = patch_targets([{"metadata": json.dumps({"world": {"scene": scene}})}], image_size=32, patch_size=8)
    assert t.shape == (1, 5, 16)
    grid = t[0].view(5, 4, 4)
    # top-right 2x2 patches: the red square; bottom-left: the blue cross; the other cells are empty (0)
    red_square = torch.tensor([list(COLORS).index("red") + 1, SHAPES.index("square") + 1, SIZES.index("large") + 1])
    assert (grid[:3, :2, 2:] == red_square.view(3, 1, 1)).all()
    assert (grid[0, 2:, :2] == list(COLORS).index("blue") + 1).all() and (grid[1, 2:, :2] == SHAPES.index("cross") + 1).all()
    assert (grid[:3, :2, :2] == 0).all() and (grid[:3, 2:, 2:] == 0).all()
    # every patch also knows its cell: row 0 on top, column 1 on the right, whatever the image
    assert grid[3].tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert grid[4].tolist() == [[0, 0, 1, 1]] * 4


def test_projector_alignment_points_each_patch_at_its_objects_words(tmp_path) -> None:
    """After the alignment, an object patch's image token is nearest, among the color words' embeddings,
    to its own object's color (and likewise for shape); before it, that holds at about chance."""
    import torch.nn.functional as F
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from edray.world.pool import generate_support_rows
    from edray.world.pretrain import PretrainConfig, _encode_rows, align_projector, patch_targets, vision_warmup
    from edray.world.scene import COLORS, SHAPES
    from edray.world.student import world_texts

    cfg = PretrainConfig.ci(num_rows=128, batch_size=16, vision_steps=100, align_steps=300)
    folder = build_student(tmp_path / "s", cfg.student, world_texts(cfg.corpus_size, cfg.pool_seed))
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    rows = generate_support_rows(cfg.pool_seed, 0, cfg.num_rows).to_pylist()
    pixels = [e["pixel_values"] for e in _encode_rows(processor, rows, cfg.student.max_length)]
    targets = patch_targets(rows, cfg.student.image_size, cfg.student.patch_size)
    vision_warmup(model, pixels, targets, cfg, rank=0, world=1)

    tok, emb = processor.tokenizer, model.get_input_embeddings().weight.detach()

    def nearest_word_accuracy() -> dict[str, float]:
        with torch.no_grad():
            feats = model.model.vision_tower(torch.cat(pixels[:32])).last_hidden_state[:, 1:]
            tokens = model.model.multi_modal_projector(feats)
        out = {}
        for k, words in ((0, list(COLORS)), (1, list(SHAPES))):
            table = emb[[tok.convert_tokens_to_ids("\u2581" + w) for w in words]]
            labels = targets[:32, k]
            on_object = labels > 0
            sims = F.cosine_similarity(tokens[on_object].unsqueeze(1), table.unsqueeze(0), dim=-1)
            out[("color", "shape")[k]] = float((sims.argmax(-1) + 1 == labels[on_object]).float().mean())
        return out

    before = nearest_word_accuracy()
    log = align_projector(model, tok, pixels, targets, cfg, rank=0, world=1)
    after = nearest_word_accuracy()
    assert after["color"] >= 0.8 and after["shape"] >= 0.8, (before, after, log)
    assert before["color"] < 0.5 and before["shape"] < 0.5, before


def test_saved_processor_gives_the_same_pixels_on_either_backend(tiny_dir):
    """``AutoProcessor`` picks the torchvision backend where torchvision is installed and the PIL one where
    it is not; the student's pixel values (and so the student a seed pretrains) must not depend on it."""
    pytest.importorskip("torchvision")
    from transformers import AutoImageProcessor

    ramp = Image.fromarray((np.arange(32 * 32 * 3) % 256).astype(np.uint8).reshape(32, 32, 3))
    images = [ramp, Image.open(io.BytesIO(_png((200, 30, 90))))]
    torchvision_side = AutoImageProcessor.from_pretrained(tiny_dir, backend="torchvision")
    pil_side = AutoImageProcessor.from_pretrained(tiny_dir, backend="pil")
    assert type(torchvision_side) is not type(pil_side)
    a = torchvision_side(images=images, return_tensors="np")["pixel_values"]
    b = pil_side(images=images, return_tensors="np")["pixel_values"]
    assert a.shape == b.shape == (2, 3, 32, 32)
    assert np.array_equal(a, b)
