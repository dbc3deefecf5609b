"""Request parsing, limits, response shapes and cache keys of the OpenAI-compatible API."""

from __future__ import annotations

import base64
import io

import pytest

from edray.serve.config import LimitsConfig
from edray.serve.core import (
    ApiError,
    chat_response,
    check_image,
    decode_data_url,
    image_data_url,
    openai_messages,
    parse_chat_body,
    request_cache_key,
    sse,
    stream_chunk,
    user_message,
)
from edray.serve.engine import ChatResult, TokenLogprob


def png(size: int = 8) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


LIMITS = LimitsConfig()


def body(**kw):
    out = {"model": "m", "messages": [user_message("what?", [png()])]}
    out.update(kw)
    return out


def refused(b, limits=LIMITS) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse_chat_body(b, limits)
    return info.value


def test_parse_image_message_to_placeholders():
    parsed = parse_chat_body(body(max_tokens=5, temperature=0.5, seed=3, logprobs=True, top_logprobs=2, stop="x"), LIMITS)
    req = parsed.request
    assert req.messages == [{"role": "user", "content": "<image>what?"}]
    assert parsed.image_refs == [png()]
    assert (req.max_tokens, req.temperature, req.seed, req.logprobs, req.top_logprobs, req.stop) == (5, 0.5, 3, True, 2, ["x"])
    assert not parsed.stream


def test_openai_messages_round_trip_keeps_text_verbatim():
    images = [png(8), png(9)]
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "<image>\nQ: a<image> b\n"}]
    parsed = parse_chat_body({"model": "m", "messages": openai_messages(msgs, images)}, LIMITS)
    assert parsed.request.messages == msgs
    assert parsed.image_refs == images
    with pytest.raises(ValueError):
        openai_messages(msgs, images[:1])


@pytest.mark.parametrize(
    "bad, param",
    [
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "messages[0].content[0].type"),
        ({"messages": [{"role": "user", "content": "a <image> b"}]}, "messages[0].content"),
        ({"model": ""}, "model"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10**7}, "max_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"stream": True, "logprobs": True}, "logprobs"),
        ({"stream": True, "stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_refusals_name_the_field(bad, param):
    err = refused(body(**bad))
    assert err.status == 400
    assert err.param == param
    assert err.body()["error"]["type"] == "invalid_request_error"


def test_not_an_object():
    assert refused([1, 2]).status == 400


def test_image_count_and_url_limits():
    limits = LimitsConfig(max_images=1)
    two = body(messages=[user_message("x", [png(), png()])])
    assert refused(two, limits).code == "too_many_images"
    remote = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}
    assert refused(body(messages=[remote])).code == "image_url_not_allowed"
    allowed = parse_chat_body(body(messages=[remote]), LimitsConfig(allow_image_urls=True))
    assert allowed.image_refs == ["https://example.com/a.png"]


def test_text_limit():
    err = refused(body(messages=[{"role": "user", "content": "x" * 11}]), LimitsConfig(max_text_chars=10))
    assert "10" in err.message


def test_decode_data_url():
    assert decode_data_url(image_data_url(b"abc", "image/png"), "p") == b"abc"
    for bad in ("data:image/png,abc", "data:image/png;base64,@@@", "http://x"):
        with pytest.raises(ApiError):
            decode_data_url(bad, "p")


def test_check_image():
    check_image(png(), LIMITS, 0)
    with pytest.raises(ApiError) as info:
        check_image(png(), LimitsConfig(max_image_bytes=64), 0)
    assert info.value.status == 413
    with pytest.raises(ApiError) as info:
        check_image(png(16), LimitsConfig(max_image_pixels=100), 2)
    assert info.value.status == 413 and info.value.param == "images[2]"
    with pytest.raises(ApiError) as info:
        check_image(b"not an image", LIMITS, 1)
    assert info.value.status == 400


def test_image_data_url_detects_mime():
    assert image_data_url(png()).startswith("data:image/png;base64,")
    assert image_data_url(b"\xff\xd8\xff\xe0rest").startswith("data:image/jpeg;base64,")
    assert base64.b64decode(image_data_url(b"xyz").split(",", 1)[1]) == b"xyz"


def test_chat_response_shape():
    res = ChatResult(text="A", prompt_tokens=3, completion_tokens=1, logprobs=[TokenLogprob("A", -0.1, [("A", -0.1), ("B", -2.4)])])
    out = chat_response(res, "m", "id1", created=5)
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "A"}
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    top = out["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    assert [t["token"] for t in top] == ["A", "B"] and top[1]["logprob"] == -2.4
    assert chat_response(ChatResult(text="x"), "m", "i")["choices"][0]["logprobs"] is None


def test_stream_chunk_and_sse():
    chunk = stream_chunk("i", "m", 1, {"content": "a"})
    assert chunk["choices"][0]["delta"] == {"content": "a"}
    assert sse(chunk).startswith(b"data: {") and sse(chunk).endswith(b"\n\n")
    assert sse("[DONE]") == b"data: [DONE]\n\n"
    assert stream_chunk("i", "m", 1, None, usage={"prompt_tokens": 1})["choices"] == []


def test_cache_key_covers_every_field():
    base = {"model": "m", "messages": [user_message("q", [png()])], "max_tokens": 4, "temperature": 0.0}
    key = request_cache_key(base, "u")
    assert key == request_cache_key(dict(reversed(list(base.items()))), "u")
    variants = [
        {**base, "model": "m2"},
        {**base, "max_tokens": 5},
        {**base, "temperature": 0.1},
        {**base, "seed": 1},
        {**base, "logprobs": True},
        {**base, "messages": [user_message("q", [png(9)])]},
        {**base, "messages": [user_message("q2", [png()])]},
    ]
    keys = {request_cache_key(v, "u") for v in variants}
    assert len(keys) == len(variants) and key not in keys
    assert request_cache_key(base, "other") != key
