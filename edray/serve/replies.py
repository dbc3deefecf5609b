"""What a model call returns: a :class:`Result`, a :class:`Failure` in a batch, or a :class:`ModelCallError`,
and the client's accounting (:class:`ClientStats`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from edray.serve.engine import TokenLogprob


class ModelCallError(Exception):
    """A call that failed after its retries, or that cannot succeed (a 4xx other than 429).

    Attributes:
        reason: what went wrong, readable as is.
        attempts: how many HTTP attempts were made.
        status: the last HTTP status, if any.
    """

    def __init__(self, reason: str, attempts: int, status: int | None = None) -> None:
        super().__init__(f"{reason} (after {attempts} attempt{'s' if attempts != 1 else ''})")
        self.reason = reason
        self.attempts = attempts
        self.status = status


@dataclass
class Result:
    """One answer.

    Attributes:
        text: the assistant message.
        logprobs: per generated token (empty unless asked for).
        usage: ``prompt_tokens`` and ``completion_tokens`` as the server counted them.
        cached: answered from the response cache (no request made).
        finish_reason: ``stop`` or ``length``.
        model: the model that answered.
        prompt_logprobs: per prompt token ``(token_id, logprob)`` when the request asked vLLM for
            ``prompt_logprobs`` (the first token has no logprob: ``None``); empty otherwise.
    """

    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    cached: bool = False
    finish_reason: str = "stop"
    model: str = ""
    prompt_logprobs: list[tuple[str, float | None]] = field(default_factory=list)

    def top_logprobs(self, position: int = 0) -> dict[str, float]:
        """The alternatives at one generated position as ``{token: logprob}`` (the chosen one included)."""
        if position >= len(self.logprobs):
            return {}
        lp = self.logprobs[position]
        out = {t: v for t, v in lp.top}
        out.setdefault(lp.token, lp.logprob)
        return out


@dataclass
class Failure:
    """A request of :meth:`ModelClient.chat_many` that failed; the batch goes on.

    Attributes:
        index: position in the batch.
        reason: what went wrong.
        attempts: HTTP attempts made.
        status: last HTTP status, if any.
    """

    index: int
    reason: str
    attempts: int
    status: int | None = None


@dataclass
class ClientStats:
    """Token and request accounting of one client (``requests`` counts every attempt; the ``probes`` of
    :meth:`ModelClient.supports` are counted apart)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    failures: int = 0
    cache_hits: int = 0
    probes: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def parse_response(data: Mapping[str, Any], cached: bool) -> Result:
    """A ``chat.completion`` body (OpenAI shape, vLLM's ``prompt_logprobs`` included) as a :class:`Result`."""
    choice = data["choices"][0]
    logprobs: list[TokenLogprob] = []
    content = (choice.get("logprobs") or {}).get("content") or []
    for item in content:
        top = [(t["token"], float(t["logprob"])) for t in item.get("top_logprobs") or []]
        logprobs.append(TokenLogprob(item["token"], float(item["logprob"]), top))
    usage = data.get("usage") or {}
    prompt_lp: list[tuple[str, float | None]] = []
    for item in data.get("prompt_logprobs") or []:
        # vLLM: one {token_id: {"logprob", "rank", "decoded_token"}} per prompt token (None for the first);
        # with prompt_logprobs=0 each holds the prompt token alone.
        if not item:
            prompt_lp.append(("", None))
            continue
        token_id, entry = next(iter(item.items()))
        prompt_lp.append((str(token_id), float(entry["logprob"]) if isinstance(entry, dict) else float(entry)))
    return Result(
        text=choice["message"].get("content") or "",
        logprobs=logprobs,
        usage={k: int(usage.get(k) or 0) for k in ("prompt_tokens", "completion_tokens")},
        cached=cached,
        finish_reason=choice.get("finish_reason") or "stop",
        model=str(data.get("model", "")),
        prompt_logprobs=prompt_lp,
    )
