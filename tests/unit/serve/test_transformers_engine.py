"""The transformers engine in process, on the world student (no Ray)."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from edray.serve.engine import ChatRequest, EngineError
from edray.serve.transformers_engine import TransformersEngine
from tests.fixtures.serve import png_bytes


@pytest.fixture(scope="module")
def engine(student_dir, lora_adapter_dir) -> TransformersEngine:
    return TransformersEngine("s", str(student_dir), {"s-tuned": str(lora_adapter_dir)}, max_total_tokens=64, torch_threads=1)


def request(model: str = "s", **kw) -> ChatRequest:
    return ChatRequest(
        model=model, messages=[{"role": "user", "content": "<image>What color is the shape?"}], images=[png_bytes()], **kw
    )


def run(coro):
    return asyncio.run(coro)


def test_generate_counts_and_logprobs(engine):
    out = run(engine.generate(request(max_tokens=3, logprobs=True, top_logprobs=4)))
    assert out.prompt_tokens > 16 and 1 <= out.completion_tokens <= 3
    assert out.logprobs and all(len(t.top) == 4 and t.logprob <= 0 for t in out.logprobs)
    assert engine.model_ids() == ["s", "s-tuned"]


def test_adapter_selection_is_per_request(engine):
    base = run(engine.generate(request(max_tokens=3, logprobs=True, top_logprobs=4)))
    tuned = run(engine.generate(request("s-tuned", max_tokens=3, logprobs=True, top_logprobs=4)))
    again = run(engine.generate(request(max_tokens=3, logprobs=True, top_logprobs=4)))
    assert base.logprobs[0].top != tuned.logprobs[0].top
    assert again.logprobs[0].top == base.logprobs[0].top


def test_stream_equals_generate(engine):
    async def collect() -> str:
        return "".join([p async for p in engine.stream(request("s-tuned", max_tokens=5))])

    assert run(collect()) == run(engine.generate(request("s-tuned", max_tokens=5))).text


@pytest.mark.parametrize(
    "req, status, words",
    [
        (request(max_tokens=60), 400, "exceeds"),
        (request(response_format={"type": "json_object"}), 400, "response_format"),
        (request("other"), 404, "not served"),
        (ChatRequest(model="s", messages=[{"role": "user", "content": "<image>x"}], images=[]), 400, "placeholders"),
        (ChatRequest(model="s", messages=[{"role": "user", "content": "<image>x"}], images=[b"nope"]), 400, "images[0]"),
    ],
)
def test_refusals(engine, req, status, words):
    with pytest.raises(EngineError) as info:
        run(engine.generate(req))
    assert info.value.status == status and words in str(info.value)


def test_only_safetensors_load(student_dir, tmp_path):
    folder = tmp_path / "no-weights"
    shutil.copytree(student_dir, folder)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(EngineError, match="safetensors"):
        TransformersEngine("s", str(folder))


def test_scoring_a_given_reply(engine):
    # Option-likelihood scoring (docs/diagnose.md): the reply is given as the assistant's message and every
    # prompt token gets the logprob the model assigns it after the tokens before it.
    import torch

    def scored(reply: str):
        return run(engine.generate(ChatRequest(
            model="s", messages=[{"role": "user", "content": "<image>What color is the shape?"},
                                 {"role": "assistant", "content": reply}],
            images=[png_bytes()], max_tokens=1, continue_final_message=True, prompt_logprobs=0,
        )))

    red, blue = scored("red"), scored("blue")
    assert red.text == "" and red.prompt_logprobs[0][1] is None and len(red.prompt_logprobs) == red.prompt_tokens
    # Same prefix, same scores; the reply token differs.
    assert red.prompt_logprobs[:-1] == blue.prompt_logprobs[:-1]
    assert red.prompt_logprobs[-1][0] != blue.prompt_logprobs[-1][0]
    # The reply's score is the next-token distribution after the prompt with the generation prompt.
    inputs = engine._inputs(request(max_tokens=1))
    with torch.inference_mode(), engine._select_adapter("s"):
        logits = engine.model(**inputs).logits[0, -1].float()
    expected = torch.log_softmax(logits, -1)[int(red.prompt_logprobs[-1][0])]
    assert red.prompt_logprobs[-1][1] == pytest.approx(float(expected), abs=1e-4)


def _mixed_requests() -> list[ChatRequest]:
    """Prompts of different lengths (so rows are padded), with and without images, base and adapter."""
    questions = ["What color is the shape?", "Is there a red square in the picture at all?", "How many?"]
    out = []
    for i, q in enumerate(questions * 2):
        images = [png_bytes()] if i % 3 != 2 else []
        out.append(ChatRequest(model="s", messages=[{"role": "user", "content": "<image>" * len(images) + q}], images=images, max_tokens=6))
    out.append(ChatRequest(model="s-tuned", messages=[{"role": "user", "content": "<image>How many?"}], images=[png_bytes()], max_tokens=6))
    return out


def test_batched_greedy_replies_equal_one_at_a_time(engine):
    requests = _mixed_requests()
    batched = run(engine.generate_batch(requests, batch_size=4))
    single = [run(engine.generate(r)) for r in requests]
    assert [b.text for b in batched] == [s.text for s in single]
    assert [b.finish_reason for b in batched] == [s.finish_reason for s in single]
    assert [b.prompt_tokens for b in batched] == [s.prompt_tokens for s in single]
    assert [b.completion_tokens for b in batched] == [s.completion_tokens for s in single]
    # The adapter row is answered by the adapter: the base gives another greedy reply to it.
    base_reply = run(engine.generate(ChatRequest(model="s", messages=requests[-1].messages, images=requests[-1].images, max_tokens=6)))
    assert batched[-1].text != base_reply.text


def test_batched_bad_rows_fail_alone(engine):
    good = _mixed_requests()[:3]
    bad = [
        ChatRequest(model="s", messages=[{"role": "user", "content": "<image>x"}], images=[b"nope"]),
        ChatRequest(model="other", messages=[{"role": "user", "content": "x"}]),
        # Too long for the engine's 64 tokens, in the same batch as the good rows (same max_tokens).
        ChatRequest(model="s", messages=[{"role": "user", "content": "red " * 80}], max_tokens=6),
    ]
    out = run(engine.generate_batch([bad[0], good[0], bad[1], good[1], bad[2], good[2]], batch_size=8))
    refusals = [out[0], out[2], out[4]]
    assert all(isinstance(r, EngineError) for r in refusals)
    assert [r.status for r in refusals] == [400, 404, 400] and "exceeds" in str(out[4])
    with pytest.raises(EngineError, match="exceeds"):
        run(engine.generate(bad[2]))
    assert [r.text for r in (out[1], out[3], out[5])] == [run(engine.generate(g)).text for g in good]
