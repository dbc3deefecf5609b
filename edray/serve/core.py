"""Pure functions of the OpenAI-compatible API: request parsing and limits, response and stream
shapes, image data URLs, and the response-cache key. No network, no Ray, no disk.

The HTTP layer (:mod:`edray.serve.app`) calls :func:`parse_chat_body` on the JSON body, fetches any
image URL the config allows, checks every image with :func:`check_image`, and hands the engine a
:class:`~edray.serve.engine.ChatRequest`. Any problem is an :class:`ApiError` carrying the HTTP status
and the OpenAI error body (``{"error": {"message", "type", "param", "code"}}``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edray.schemas import IMAGE_PLACEHOLDER
from edray.serve.config import LimitsConfig
from edray.serve.engine import ChatRequest, ChatResult

ROLES = ("system", "user", "assistant")
# Request fields this server accepts; anything else in the body is ignored as OpenAI servers do,
# except the fields below that would change the answer's meaning if silently dropped.
_UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "audio", "modalities", "prediction")


class ApiError(Exception):
    """A request the server refuses, with its HTTP status and OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type_: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_ or _error_type(status)

    def body(self) -> dict[str, Any]:
        """The OpenAI error body."""
        return error_body(self.message, self.type, self.param, self.code)


def _error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """``{"error": {...}}`` as OpenAI servers answer a refused request."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


@dataclass
class ParsedChat:
    """A chat request after parsing: images are still references (bytes, or a URL to fetch).

    Attributes:
        request: the engine request with ``images`` empty; fill it from ``image_refs``.
        image_refs: one entry per ``<image>`` placeholder, in order: decoded bytes or an http(s) URL.
        stream: answer as server-sent events.
    """

    request: ChatRequest
    image_refs: list[bytes | str] = field(default_factory=list)
    stream: bool = False


def decode_data_url(url: str, param: str) -> bytes:
    """Decode a ``data:<mime>;base64,<payload>`` URL.

    Raises:
        ApiError: 400 when the URL is not base64 data or does not decode.
    """
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise ApiError(400, f"{param}: expected a data URL of the form data:image/png;base64,<data>", param=param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{param}: the base64 payload does not decode", param=param) from None


def _as_int(body: dict[str, Any], key: str, default: int | None, lo: int, hi: int) -> int | None:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{key}: expected an integer, got {type(value).__name__}", param=key)
    if not lo <= value <= hi:
        raise ApiError(400, f"{key}: {value} is outside [{lo}, {hi}]", param=key)
    return value


def _parse_content(content: Any, where: str, refs: list[bytes | str], limits: LimitsConfig) -> str:
    if isinstance(content, str):
        if IMAGE_PLACEHOLDER in content:
            raise ApiError(400, f"{where}: text may not contain the reserved marker {IMAGE_PLACEHOLDER}", param=where)
        return content
    if not isinstance(content, list):
        raise ApiError(400, f"{where}: expected a string or a list of content parts", param=where)
    pieces: list[str] = []
    for j, part in enumerate(content):
        pwhere = f"{where}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise ApiError(400, f"{pwhere}: expected an object with a 'type'", param=pwhere)
        kind = part["type"]
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise ApiError(400, f"{pwhere}.text: expected a string", param=f"{pwhere}.text")
            if IMAGE_PLACEHOLDER in text:
                raise ApiError(
                    400, f"{pwhere}.text: text may not contain the reserved marker {IMAGE_PLACEHOLDER}", param=pwhere
                )
            pieces.append(text)
        elif kind == "image_url":
            spec = part.get("image_url")
            url = spec.get("url") if isinstance(spec, dict) else spec
            if not isinstance(url, str) or not url:
                raise ApiError(400, f"{pwhere}.image_url.url: expected a URL string", param=f"{pwhere}.image_url")
            if len(refs) >= limits.max_images:
                raise ApiError(
                    400, f"too many images: at most {limits.max_images} per request", param=pwhere, code="too_many_images"
                )
            if url.startswith("data:"):
                refs.append(decode_data_url(url, f"{pwhere}.image_url.url"))
            elif url.startswith(("http://", "https://")):
                if not limits.allow_image_urls:
                    raise ApiError(
                        400,
                        f"{pwhere}.image_url.url: this server does not fetch image URLs; send the image as a "
                        "base64 data URL",
                        param=f"{pwhere}.image_url",
                        code="image_url_not_allowed",
                    )
                refs.append(url)
            else:
                raise ApiError(
                    400, f"{pwhere}.image_url.url: expected a data: or http(s): URL", param=f"{pwhere}.image_url"
                )
            pieces.append(IMAGE_PLACEHOLDER)
        else:
            raise ApiError(400, f"{pwhere}.type: unsupported content part type {kind!r}", param=f"{pwhere}.type")
    return "".join(pieces)


def parse_chat_body(body: Any, limits: LimitsConfig) -> ParsedChat:
    """Validate an OpenAI ``/v1/chat/completions`` body against the limits.

    Args:
        body: the decoded JSON body.
        limits: request limits.

    Returns:
        The parsed request; image URLs are left for the caller to fetch.

    Raises:
        ApiError: 400 naming the offending field.
    """
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model: required, a model name from /v1/models", param="model")
    for key in _UNSUPPORTED:
        if body.get(key) not in (None, [], {}):
            raise ApiError(400, f"{key}: not supported by this server", param=key, code="unsupported_parameter")
    _as_int(body, "n", 1, 1, 1)  # one choice per request
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages: required, a non-empty list", param="messages")
    if len(messages) > limits.max_messages:
        raise ApiError(400, f"messages: at most {limits.max_messages} messages per request", param="messages")
    refs: list[bytes | str] = []
    out_messages: list[dict[str, str]] = []
    chars = 0
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise ApiError(400, f"{where}: expected an object with 'role' and 'content'", param=where)
        role = msg.get("role")
        if role not in ROLES:
            raise ApiError(400, f"{where}.role: expected one of {list(ROLES)}, got {role!r}", param=f"{where}.role")
        if "content" not in msg or msg["content"] is None:
            raise ApiError(400, f"{where}.content: required", param=f"{where}.content")
        text = _parse_content(msg["content"], f"{where}.content", refs, limits)
        chars += len(text)
        out_messages.append({"role": role, "content": text})
    if chars > limits.max_text_chars:
        raise ApiError(400, f"messages: {chars} characters of text; the limit is {limits.max_text_chars}", param="messages")

    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = _as_int({"max_tokens": max_tokens}, "max_tokens", 256, 1, limits.max_tokens)
    temperature = body.get("temperature", 0.0)
    if temperature is None:
        temperature = 0.0
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0.0 <= temperature <= 2.0:
        raise ApiError(400, f"temperature: expected a number in [0, 2], got {temperature!r}", param="temperature")
    seed = _as_int(body, "seed", None, -(2**63), 2**63 - 1)
    logprobs = body.get("logprobs", False) or False
    if not isinstance(logprobs, bool):
        raise ApiError(400, "logprobs: expected true or false", param="logprobs")
    top_logprobs = _as_int(body, "top_logprobs", 0, 0, 20)
    if top_logprobs and not logprobs:
        raise ApiError(400, "top_logprobs: requires logprobs=true", param="top_logprobs")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4):
        raise ApiError(400, "stop: expected a string or a list of up to 4 non-empty strings", param="stop")
    response_format = body.get("response_format")
    if response_format is not None:
        if not isinstance(response_format, dict) or response_format.get("type") not in ("text", "json_object", "json_schema"):
            raise ApiError(
                400, "response_format.type: expected 'text', 'json_object' or 'json_schema'", param="response_format"
            )
        if response_format["type"] == "json_schema" and not isinstance(
            (response_format.get("json_schema") or {}).get("schema"), dict
        ):
            raise ApiError(400, "response_format.json_schema.schema: expected a JSON schema object", param="response_format")
        if response_format["type"] == "text":
            response_format = None
    stream = body.get("stream", False) or False
    if not isinstance(stream, bool):
        raise ApiError(400, "stream: expected true or false", param="stream")
    if stream and logprobs:
        raise ApiError(400, "logprobs: not available with stream=true; send stream=false", param="logprobs")
    options = body.get("stream_options") or {}
    if isinstance(options, dict) and options.get("include_usage"):
        # Engines stream text pieces, not tokens: a usage count here would be made up.
        raise ApiError(
            400, "stream_options.include_usage: not supported; send stream=false to get usage", param="stream_options"
        )
    continue_final = body.get("continue_final_message", False) or False
    if not isinstance(continue_final, bool):
        raise ApiError(400, "continue_final_message: expected true or false", param="continue_final_message")
    if continue_final and out_messages[-1]["role"] != "assistant":
        raise ApiError(400, "continue_final_message: the last message must be the assistant's", param="messages")
    prompt_logprobs = _as_int(body, "prompt_logprobs", None, 0, 20)
    request = ChatRequest(
        model=model,
        messages=out_messages,
        max_tokens=int(max_tokens or 256),
        temperature=float(temperature),
        seed=seed,
        logprobs=logprobs,
        top_logprobs=int(top_logprobs or 0),
        response_format=response_format,
        stop=stop,
        continue_final_message=continue_final,
        prompt_logprobs=prompt_logprobs,
    )
    return ParsedChat(request=request, image_refs=refs, stream=stream)


def check_image(data: bytes, limits: LimitsConfig, index: int) -> None:
    """Check one encoded image against the limits and that it decodes.

    Raises:
        ApiError: 413 when too large, 400 when it is not a readable image.
    """
    param = f"images[{index}]"
    if len(data) > limits.max_image_bytes:
        raise ApiError(
            413,
            f"{param}: {len(data)} bytes; the limit is {limits.max_image_bytes} bytes per image",
            param=param,
            code="image_too_large",
        )
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > limits.max_image_pixels:
                raise ApiError(
                    413,
                    f"{param}: {width}x{height} pixels; the limit is {limits.max_image_pixels} pixels",
                    param=param,
                    code="image_too_large",
                )
            img.verify()
    except ApiError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ApiError(400, f"{param}: not a readable image ({type(exc).__name__})", param=param) from None


def new_request_id() -> str:
    """A fresh ``chatcmpl-...`` identifier."""
    import uuid

    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def _logprobs_body(result: ChatResult) -> dict[str, Any] | None:
    if result.logprobs is None:
        return None
    content = []
    for lp in result.logprobs:
        content.append(
            {
                "token": lp.token,
                "logprob": lp.logprob,
                "bytes": list(lp.token.encode("utf-8")),
                "top_logprobs": [
                    {"token": t, "logprob": v, "bytes": list(t.encode("utf-8"))} for t, v in lp.top
                ],
            }
        )
    return {"content": content}


def chat_response(result: ChatResult, model: str, request_id: str, created: int | None = None) -> dict[str, Any]:
    """The ``chat.completion`` body for one engine result (with vLLM's ``prompt_logprobs`` when it has them)."""
    body = {
        "id": request_id,
        "object": "chat.completion",
        "created": int(created if created is not None else time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "logprobs": _logprobs_body(result),
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        },
    }
    if result.prompt_logprobs is not None:
        body["prompt_logprobs"] = [
            None if lp is None else {str(token_id): {"logprob": lp}} for token_id, lp in result.prompt_logprobs
        ]
    return body


def stream_chunk(
    request_id: str,
    model: str,
    created: int,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``; ``delta=None`` with ``usage`` is the trailing usage chunk."""
    chunk: dict[str, Any] = {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def sse(payload: dict[str, Any] | str) -> bytes:
    """One server-sent event line."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


# --- building requests (used by clients) -------------------------------------------------------

_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"), (b"RIFF", "image/webp"))


def image_mime(data: bytes) -> str:
    """The MIME type of an encoded image from its magic bytes (``image/png`` when unknown)."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    return "image/png"


def image_data_url(data: bytes, mime: str | None = None) -> str:
    """An encoded image as a base64 data URL, as OpenAI-compatible servers accept it."""
    return f"data:{mime or image_mime(data)};base64,{base64.b64encode(data).decode('ascii')}"


def image_part(data: bytes, mime: str | None = None) -> dict[str, Any]:
    """An ``image_url`` content part holding the image inline."""
    return {"type": "image_url", "image_url": {"url": image_data_url(data, mime)}}


def user_message(text: str, images: Sequence[bytes] = (), images_first: bool = True) -> dict[str, Any]:
    """A user message with text and inline images (images first, as most VLM chat templates expect)."""
    parts = [image_part(img) for img in images]
    text_part = [{"type": "text", "text": text}] if text else []
    content = parts + text_part if images_first else text_part + parts
    return {"role": "user", "content": content if images else text}


def openai_messages(messages: Sequence[Mapping[str, str]], images: Sequence[bytes] = ()) -> list[dict[str, Any]]:
    """Messages in edray's form (text with one ``<image>`` placeholder per image) to OpenAI messages.

    Each placeholder becomes an inline image part; the text around it is kept verbatim, so the server
    rebuilds exactly the same text.

    Args:
        messages: ``[{"role": ..., "content": str}]``.
        images: encoded images, one per placeholder, in order.

    Returns:
        OpenAI messages (plain string content where a message has no image).

    Raises:
        ValueError: the number of placeholders and images differ.
    """
    n_placeholders = sum(str(m["content"]).count(IMAGE_PLACEHOLDER) for m in messages)
    if n_placeholders != len(images):
        raise ValueError(f"{n_placeholders} {IMAGE_PLACEHOLDER} placeholders but {len(images)} images")
    remaining = iter(images)
    out: list[dict[str, Any]] = []
    for msg in messages:
        text = str(msg["content"])
        if IMAGE_PLACEHOLDER not in text:
            out.append({"role": msg["role"], "content": text})
            continue
        parts: list[dict[str, Any]] = []
        for i, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
            if i:
                parts.append(image_part(next(remaining)))
            if piece:
                parts.append({"type": "text", "text": piece})
        out.append({"role": msg["role"], "content": parts})
    return out


def _hash_images(value: Any) -> Any:
    """Replace every data URL by the SHA-256 of its payload, so cache keys stay small."""
    if isinstance(value, str) and value.startswith("data:"):
        return "sha256:" + hashlib.sha256(value.encode("ascii", "replace")).hexdigest()
    if isinstance(value, list):
        return [_hash_images(v) for v in value]
    if isinstance(value, dict):
        return {k: _hash_images(v) for k, v in value.items()}
    return value


def request_cache_key(payload: dict[str, Any], base_url: str = "") -> str:
    """A key for a full chat request: endpoint, model, messages (images by hash) and every sampling field.

    Two requests share a key only if every field that can change the answer is equal.
    """
    canonical = json.dumps(
        {"base_url": base_url, "payload": _hash_images(payload)}, sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
