"""The world student's folder loads unchanged in vLLM (CPU) and in transformers, and both generate
the same greedy tokens for an image prompt."""

from __future__ import annotations

import io

import pytest
from PIL import Image

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

vllm = pytest.importorskip("vllm")


def _image():
    from edray.world.config import SceneConfig
    from edray.world.scene import render_scene, sample_scene
    import random

    return Image.open(io.BytesIO(render_scene(sample_scene(random.Random(3), SceneConfig())))).convert("RGB")


def test_student_generates_same_tokens_in_vllm_and_transformers(student_dir):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc = AutoProcessor.from_pretrained(student_dir)
    prompt = proc.apply_chat_template(
        [{"role": "user", "content": "<image>\nWhat color is the square? Reason step by step."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    image = _image()
    n_new = 8

    model = AutoModelForImageTextToText.from_pretrained(student_dir, dtype=torch.float32)
    enc = proc(text=[prompt], images=[image], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False)
    hf_tokens = out[0, enc["input_ids"].shape[1]:].tolist()
    assert len(hf_tokens) == n_new

    llm = vllm.LLM(
        model=str(student_dir),
        dtype="float32",
        gpu_memory_utilization=0.3,
        max_model_len=128,
        max_num_seqs=4,
        enforce_eager=True,
        seed=0,
        limit_mm_per_prompt={"image": 1},
    )
    try:
        params = vllm.SamplingParams(max_tokens=n_new, min_tokens=n_new, temperature=0.0)
        result = llm.generate([{"prompt": prompt, "multi_modal_data": {"image": image}}], params)
    finally:
        del llm
    vllm_tokens = list(result[0].outputs[0].token_ids)
    # Random weights give flat logits: identical greedy paths mean vLLM read every weight under
    # the right name (a silently re-initialized tower would diverge at once).
    assert vllm_tokens == hf_tokens
