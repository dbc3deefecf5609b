"""The served application, end to end through the `openai` client: the world student with a LoRA
adapter behind the transformers engine, on the session's local Ray."""

from __future__ import annotations

import base64

import httpx
import openai
import pytest

from edray.serve.client import ClientConfig, Failure, ModelClient, Result, user_message
from tests.fixtures.serve import png_bytes

QUESTION = "What color is the shape?"


@pytest.fixture(scope="module")
def oai(served_app) -> openai.OpenAI:
    return openai.OpenAI(base_url=served_app.base_url, api_key=served_app.api_key, max_retries=0, timeout=60)


def ask(oai: openai.OpenAI, model: str = "student", **kwargs):
    messages = kwargs.pop("messages", [user_message(QUESTION, [png_bytes()])])
    return oai.chat.completions.create(model=model, messages=messages, max_tokens=kwargs.pop("max_tokens", 8), **kwargs)


def test_models_lists_base_and_adapter(oai):
    ids = {m.id for m in oai.models.list().data}
    assert {"student", "student-tuned"} <= ids


def test_health_and_ready(served_app):
    assert httpx.get(served_app.root_url + "/health").json()["status"] == "ok"
    ready = httpx.get(served_app.root_url + "/ready")
    assert ready.status_code == 200 and "student-tuned" in ready.json()["models"]


def test_image_question(oai):
    out = ask(oai)
    choice = out.choices[0]
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    # The prompt includes the 16 image tokens of the 32x32 image.
    assert out.usage.prompt_tokens > 16
    assert 1 <= out.usage.completion_tokens <= 8


def test_logprobs(oai):
    out = ask(oai, logprobs=True, top_logprobs=3, max_tokens=4)
    content = out.choices[0].logprobs.content
    assert len(content) >= 1
    for item in content:
        assert item.logprob <= 0.0
        assert len(item.top_logprobs) == 3
        values = [t.logprob for t in item.top_logprobs]
        assert values == sorted(values, reverse=True)
        # Greedy decoding picks the most likely token.
        assert item.token == item.top_logprobs[0].token
        assert item.logprob == pytest.approx(values[0], abs=1e-5)


def test_adapter_changes_output(oai):
    base = ask(oai, "student", logprobs=True, top_logprobs=5, max_tokens=4)
    tuned = ask(oai, "student-tuned", logprobs=True, top_logprobs=5, max_tokens=4)
    base_first = {t.token: t.logprob for t in base.choices[0].logprobs.content[0].top_logprobs}
    tuned_first = {t.token: t.logprob for t in tuned.choices[0].logprobs.content[0].top_logprobs}
    assert base_first != tuned_first
    # The base model is still reachable after the adapter ran (adapter selection is per request).
    again = ask(oai, "student", logprobs=True, top_logprobs=5, max_tokens=4)
    assert again.choices[0].message.content == base.choices[0].message.content


def test_streaming_matches_non_streaming(oai):
    full = ask(oai, "student-tuned", max_tokens=6).choices[0].message.content
    pieces = []
    for chunk in ask(oai, "student-tuned", max_tokens=6, stream=True):
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
    assert "".join(pieces) == full


def test_seeded_sampling_is_reproducible(oai):
    a = ask(oai, temperature=1.5, seed=7, max_tokens=8).choices[0].message.content
    b = ask(oai, temperature=1.5, seed=7, max_tokens=8).choices[0].message.content
    assert a == b


def _post(served_app, body, key: str | None = "default", raw: bytes | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if key == "default":
        key = served_app.api_key
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    url = served_app.base_url + "/chat/completions"
    if raw is not None:
        return httpx.post(url, content=raw, headers=headers, timeout=60)
    return httpx.post(url, json=body, headers=headers, timeout=60)


def _body(**kw):
    body = {"model": "student", "messages": [user_message(QUESTION, [png_bytes()])], "max_tokens": 2}
    body.update(kw)
    return body


def _assert_error(resp: httpx.Response, status: int, words: str) -> None:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    assert words.lower() in err["message"].lower()


def test_refusals_are_clear_and_server_keeps_serving(served_app, oai):
    _assert_error(_post(served_app, _body(), key=None), 401, "missing API key")
    _assert_error(_post(served_app, _body(), key="not-the-key"), 401, "invalid API key")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served_app.base_url, api_key="wrong", max_retries=0).models.list()

    # The test app allows 64 KiB per image; random bytes do not compress.
    import os

    big = b"\x89PNG\r\n\x1a\n" + os.urandom(70 * 1024)
    url = "data:image/png;base64," + base64.b64encode(big).decode()
    huge = _body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])
    _assert_error(_post(served_app, huge), 413, "limit")

    _assert_error(_post(served_app, _body(messages=[{"role": "robot", "content": "hi"}])), 400, "messages[0].role")
    _assert_error(_post(served_app, _body(messages="hello")), 400, "messages")
    _assert_error(_post(served_app, None, raw=b"{not json"), 400, "not valid JSON")
    not_image = "data:image/png;base64," + base64.b64encode(b"plain text").decode()
    bad_img = _body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": not_image}}]}])
    _assert_error(_post(served_app, bad_img), 400, "not a readable image")
    _assert_error(_post(served_app, _body(model="nope")), 404, "not served")
    _assert_error(_post(served_app, _body(max_tokens=10_000)), 400, "max_tokens")
    remote = _body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png"}}]}])
    _assert_error(_post(served_app, remote), 400, "does not fetch image URLs")
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    _assert_error(_post(served_app, _body(response_format=schema)), 400, "response_format")

    # Still serving.
    assert ask(oai).choices[0].message.content is not None


def test_model_client_against_the_app(served_app, tmp_path):
    cfg = ClientConfig(
        base_url=served_app.base_url,
        model="student",
        api_key_env="EDRAY_TEST_SERVE_KEY",
        max_concurrency=4,
        max_retries=1,
        backoff_s=0.01,
        cache_dir=str(tmp_path / "cache"),
    )
    client = ModelClient(cfg)
    requests = [
        {"messages": [user_message(QUESTION, [png_bytes((i * 40, 0, 0))])], "max_tokens": 3, "logprobs": True, "top_logprobs": 2}
        for i in range(4)
    ]
    requests.append({"messages": [{"role": "robot", "content": "x"}]})
    requests.append({"messages": [user_message(QUESTION, [png_bytes()])], "model": "student-tuned", "max_tokens": 3})
    out = client.chat_many(requests, progress=False)
    assert [type(r) for r in out] == [Result] * 4 + [Failure, Result]
    assert out[4].status == 400 and "role" in out[4].reason and out[4].attempts == 1
    assert all(len(r.logprobs) >= 1 and len(r.logprobs[0].top) == 2 for r in out[:4])
    assert client.stats.failures == 1 and client.stats.completion_tokens > 0
    # A fresh client (as a resumed stage would build) answers the same batch from the cache.
    again = ModelClient(cfg)
    out2 = again.chat_many(requests, progress=False)
    assert all(r.cached for r in out2 if isinstance(r, Result))
    assert [r.text for r in out2 if isinstance(r, Result)] == [r.text for r in out if isinstance(r, Result)]
    assert again.stats.cache_hits == 5 and again.stats.requests == 1  # only the failing request was sent


def test_world_teacher_answers_logprobs_through_the_app(served_app, tmp_path):
    if "teacher" not in served_app.names:
        pytest.skip("edray.world.teacher is not available")
    import math
    import random

    from edray.serve.client import openai_messages
    from edray.world.config import SceneConfig
    from edray.world.scene import render_scene, sample_scene
    from edray.world.teacher_prompts import build_answer_switch_messages

    png = render_scene(sample_scene(random.Random(0), SceneConfig()))
    messages = build_answer_switch_messages("What color is the square?", ["red", "blue"], "A", 0.6, [])
    cfg = ClientConfig(base_url=served_app.base_url, model="teacher", api_key_env="EDRAY_TEST_SERVE_KEY")
    [out] = ModelClient(cfg).chat_many(
        [{"messages": openai_messages(messages, [png]), "logprobs": True, "top_logprobs": 2, "max_tokens": 1}],
        progress=False,
    )
    assert isinstance(out, Result), out
    probs = {t: math.exp(v) for t, v in out.top_logprobs().items()}
    assert set(probs) == {"A", "B"}
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-6)
    assert out.text == max(probs, key=probs.get)


def test_auto_finds_what_each_served_engine_offers(served_app):
    """The probes behind `auto`: the transformers engine scores a given reply (option likelihood) but
    constrains nothing; the world teacher offers logprobs only."""
    import asyncio

    from edray.diagnose.queries import probability_path

    def offers(model: str) -> tuple[dict[str, bool], str]:
        client = ModelClient(ClientConfig(base_url=served_app.base_url, model=model, api_key_env="EDRAY_TEST_SERVE_KEY"))

        async def probe() -> tuple[dict[str, bool], str]:
            found = {f: await client.supports(f) for f in ("choice", "likelihood", "json_schema")}
            return found, await probability_path(client, "auto")

        return asyncio.run(probe())

    assert offers("student") == ({"choice": False, "likelihood": True, "json_schema": False}, "likelihood")
    if "teacher" in served_app.names:
        assert offers("teacher") == ({"choice": False, "likelihood": False, "json_schema": False}, "top_logprobs")
