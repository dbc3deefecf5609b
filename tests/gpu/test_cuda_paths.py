"""The GPU paths: bf16 training steps (LoRA, full, SPIDER), a tuned student evaluated and served by the
transformers engine, and the cross-worker loss reduce on NCCL.

Marked ``gpu``: skipped where no CUDA device is visible (CPU CI). They import no more than torch,
transformers, peft and the modules built on them (``edray.train.core``, ``edray.train.spider``, the
transformers engine), so they run on a machine without Ray or vLLM. The tiny LLaVA is built here from
config, with a word-level tokenizer, so nothing comes from a model hub.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu

WORDS = "what colour is the square circle red blue green yes no left right step answer one two three".split()
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<eos>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _png(value: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (value, 255 - value, 128)).save(buf, format="PNG")
    return buf.getvalue()


def build_tiny_llava(out: Path) -> Path:
    """A tiny LLaVA folder (CLIP tower 2 x 64, Llama 2 x 64, 16 image tokens) with random weights."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        CLIPVisionConfig,
        GenerationConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    specials = ["<pad>", "<bos>", "<eos>", "<unk>", "<image>", "<|system|>", "<|user|>", "<|assistant|>"]
    vocab = {t: i for i, t in enumerate([*specials, *WORDS, ":", "?", "."])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"}, padding_side="left", model_max_length=128,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                            do_center_crop=True, do_convert_rgb=True)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHAT_TEMPLATE)
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=64)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=128,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=4, vision_feature_layer=-1,
                         vision_feature_select_strategy="default", image_seq_length=16, tie_word_embeddings=False)
    config.pad_token_id, config.bos_token_id, config.eos_token_id = 0, 1, 2
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, do_sample=False)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


def _rows(n: int = 8) -> list[dict]:
    return [
        {"id": f"r{i}", "images": [_png(40 * i % 256)],
         "messages": [{"role": "user", "content": "<image> what colour is the square ?"},
                      {"role": "assistant", "content": "step one : red . answer : red" if i % 2 else "answer : blue"}]}
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("gpu") / "llava")


def _load(folder: Path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.bfloat16).to("cuda")
    return processor, model


def _batch(processor, model) -> dict:
    from edray.train.core import collate_rows

    batch = collate_rows(processor, _rows())
    return {k: (v.to("cuda", dtype=model.dtype) if v.is_floating_point() else v.to("cuda")) for k, v in batch.items()}


def _step(model, batch, optimizer) -> float:
    from edray.train.core import answer_loss

    labels = batch["labels"]
    out = model(**{k: v for k, v in batch.items() if k != "labels"})
    loss_sum, n_tok = answer_loss(out.logits.float(), labels)
    loss = loss_sum / n_tok.clamp(min=1)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return float(loss.detach())


def test_bf16_lora_step_moves_only_the_adapter(tiny_llava: Path) -> None:
    from peft import LoraConfig, get_peft_model

    from edray.train.core import DEFAULT_LORA_TARGETS

    processor, model = _load(tiny_llava)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=DEFAULT_LORA_TARGETS, lora_dropout=0.0))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    batch = _batch(processor, model)
    t0 = time.perf_counter()
    losses = [_step(model, batch, optimizer) for _ in range(5)]
    print(f"\nLoRA bf16 step: {(time.perf_counter() - t0) / 5 * 1000:.1f} ms, losses {losses}")
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(before[n], p) for n, p in trainable.items())
    assert all(torch.equal(frozen[n], p) for n, p in model.named_parameters() if n in frozen)


def test_bf16_full_step_lowers_the_loss(tiny_llava: Path) -> None:
    from edray.train.core import select_full_trainable

    processor, model = _load(tiny_llava)
    names = select_full_trainable(model, last_n_layers=1)
    params = [p for n, p in model.named_parameters() if n in set(names)]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    batch = _batch(processor, model)
    t0 = time.perf_counter()
    losses = [_step(model, batch, optimizer) for _ in range(20)]
    print(f"\nfull bf16 step: {(time.perf_counter() - t0) / 20 * 1000:.1f} ms, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < losses[0]


def test_bf16_spider_step_keeps_masked_weights_at_theta0(tiny_llava: Path) -> None:
    from edray.train.core import answer_loss, select_full_trainable
    from edray.train.spider import SpiderState

    processor, model = _load(tiny_llava)
    names = set(select_full_trainable(model, last_n_layers=1))
    named = [(n, p) for n, p in model.named_parameters() if n in names]
    spider = SpiderState.from_parameters(named)
    assert all(t.dtype == torch.float32 and t.is_cuda for t in spider.theta0.values())  # fp32 even in bf16
    optimizer = torch.optim.AdamW([p for _, p in named], lr=3e-3)
    batch = _batch(processor, model)
    plain = spider_s = 0.0
    for step in range(6):
        t0 = time.perf_counter()
        out = model(**{k: v for k, v in batch.items() if k != "labels"})
        loss_sum, n_tok = answer_loss(out.logits.float(), batch["labels"])
        (loss_sum / n_tok.clamp(min=1)).backward()
        optimizer.step()
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        spider.capture(named)
        optimizer.zero_grad(set_to_none=True)
        densities = spider.apply(named)
        torch.cuda.synchronize()
        plain += t1 - t0
        spider_s += time.perf_counter() - t1
    print(f"\nSPIDER on CUDA: step {plain / 6 * 1000:.1f} ms + mask {spider_s / 6 * 1000:.1f} ms "
          f"({spider_s / plain:.0%} overhead); densities {list(densities.values())[:3]}")
    moved = kept = 0
    for n, p in named:
        theta0 = spider.theta0[n].to(p.dtype)
        same = p.detach() == theta0
        kept += int(same.sum())
        moved += int((~same).sum())
    assert moved > 0 and kept > 0  # some entries were released, the rest returned to θ0


def test_tuned_student_is_evaluated_and_served_on_cuda(tiny_llava: Path, tmp_path: Path) -> None:
    from edray.serve.engine import ChatRequest
    from edray.serve.transformers_engine import TransformersEngine
    from edray.train.core import select_full_trainable

    processor, model = _load(tiny_llava)
    names = set(select_full_trainable(model, last_n_layers=2))
    optimizer = torch.optim.AdamW([p for n, p in model.named_parameters() if n in names], lr=1e-2)
    batch = _batch(processor, model)
    losses = [_step(model, batch, optimizer) for _ in range(60)]
    assert losses[-1] < 0.5 * losses[0]
    tuned = tmp_path / "tuned"
    model.save_pretrained(tuned, safe_serialization=True)
    processor.save_pretrained(tuned)

    import asyncio

    engine = TransformersEngine("student", str(tuned), dtype="bfloat16").to_device("cuda")
    assert engine.model.device.type == "cuda"
    rows = _rows()
    correct = 0
    t0 = time.perf_counter()
    for row in rows:
        req = ChatRequest(model="student", messages=[{"role": "user", "content": row["messages"][0]["content"]}],
                          images=row["images"], max_tokens=12, logprobs=True, top_logprobs=3)
        out = asyncio.run(engine.generate(req))
        assert out.text and out.logprobs and all(lp.logprob <= 0.0 for lp in out.logprobs)
        correct += row["messages"][1]["content"].split()[-1] in out.text
    print(f"\ntuned student on CUDA: {correct}/{len(rows)} answers right, "
          f"{(time.perf_counter() - t0) / len(rows) * 1000:.0f} ms per request")


def test_loss_reduce_runs_on_the_nccl_device(tmp_path: Path) -> None:
    import torch.distributed as dist

    from edray.train.core import all_reduce_sum

    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        loss_acc = torch.tensor([3.5, 7.0], dtype=torch.float64)  # CPU float64, as train_func keeps it
        out = all_reduce_sum(loss_acc)
        assert out.device.type == "cpu" and out.dtype == torch.float64 and out.tolist() == [3.5, 7.0]
        on_gpu = torch.tensor([1.0, 2.0], device="cuda")
        assert all_reduce_sum(on_gpu).is_cuda
    finally:
        dist.destroy_process_group()
