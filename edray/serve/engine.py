"""The engine contract behind the OpenAI-compatible API.

The HTTP layer (``edray.serve.app``) parses and validates an OpenAI chat request, decodes every image
(base64 data URL, or a URL when fetching is allowed) to encoded bytes, and hands an engine a
:class:`ChatRequest` whose messages are plain text with one ``<image>`` placeholder per image, in
order. Engines: transformers (any HF image-text-to-text folder), vLLM (through ``ray.serve.llm``), and
the skills world's teacher (``edray.world.teacher``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class ChatRequest:
    """A validated chat request.

    Attributes:
        model: the model name the client asked for (base model or a LoRA adapter name).
        messages: ``[{"role": ..., "content": str}]``; each image is the placeholder ``<image>``.
        images: encoded image files, one per placeholder, in order.
        max_tokens: upper bound on generated tokens.
        temperature: 0 means greedy.
        seed: sampling seed, if any.
        logprobs: return per-token log-probabilities.
        top_logprobs: how many alternatives per token (0..20).
        response_format: OpenAI ``response_format`` (``json_object`` / ``json_schema``), or ``None``.
        stop: stop strings.
        continue_final_message: the last message is the assistant's and is continued, not answered
            (vLLM's field of the same name); with ``prompt_logprobs`` it scores a given reply.
        prompt_logprobs: return the log-probability of each prompt token (vLLM's field; ``None``: no).
    """

    model: str
    messages: list[dict[str, str]]
    images: list[bytes] = field(default_factory=list)
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    response_format: dict[str, Any] | None = None
    stop: list[str] | None = None
    continue_final_message: bool = False
    prompt_logprobs: int | None = None


@dataclass
class TokenLogprob:
    """One generated token with its log-probability and the top alternatives (token, logprob)."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class ChatResult:
    """What an engine returns for one request (``prompt_logprobs``: ``(token id, logprob)`` per prompt
    token, the first without one, when the request asked)."""

    text: str
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[tuple[int, float | None]] | None = None


class EngineError(Exception):
    """A request the engine refuses; ``status`` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@runtime_checkable
class Engine(Protocol):
    """What the serving layer needs from a model engine."""

    def model_ids(self) -> list[str]:
        """Names this engine answers to (the base model, then adapters)."""
        ...

    async def generate(self, request: ChatRequest) -> ChatResult:
        """Complete one request."""
        ...

    def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        """Yield text deltas for one request (engines without streaming yield the whole text once)."""
        ...
