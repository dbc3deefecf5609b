"""Call an in-process engine with the model client's batch interface.

:class:`EngineClient` lets the diagnose stage (or a benchmark) talk to an :class:`~edray.serve.engine.Engine`
living in the same process — the skills world's teacher, for instance — exactly as it talks to a served
model through :class:`~edray.serve.client.ModelClient`: the same request mappings, the same
``Result``/``Failure`` answers, bounded concurrency, retries of retryable engine errors (5xx, 429) and
timeouts, and the same accounting. Requests go through the server's own request parser, so what the
engine sees is what it would see over HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from edray.serve.client import ClientStats, Failure, Result
from edray.serve.config import LimitsConfig
from edray.serve.core import ApiError, parse_chat_body
from edray.serve.engine import Engine, EngineError

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class EngineClient:
    """A :class:`ModelClient` look-alike over an in-process engine (no HTTP, no response cache).

    Args:
        engine: the engine to call.
        model: default model name of requests that name none.
        max_retries: retries of a retryable failure after the first attempt.
        timeout_s: per-attempt timeout.
        max_concurrency: requests in flight at once.
    """

    def __init__(
        self, engine: Engine, model: str, max_retries: int = 4, timeout_s: float = 60.0, max_concurrency: int = 8
    ) -> None:
        self.engine = engine
        self.model = model
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.max_concurrency = max_concurrency
        self.stats = ClientStats()
        self.limits = LimitsConfig()

    async def chat(self, **request: Any) -> Result:
        """One request (keyword arguments as :meth:`ModelClient.chat`).

        Raises:
            EngineError: a non-retryable engine error, or the last retryable one after the retries.
        """
        body = {k: v for k, v in request.items() if k != "use_cache"}
        body.setdefault("model", self.model)
        try:
            parsed = parse_chat_body(body, self.limits)
        except ApiError as exc:
            raise EngineError(str(exc), exc.status) from None
        req = parsed.request
        req.images = [r for r in parsed.image_refs if isinstance(r, bytes)]
        last: EngineError | None = None
        attempts = 0
        for retry in range(self.max_retries + 1):
            attempts += 1
            self.stats.requests += 1
            try:
                out = await asyncio.wait_for(self.engine.generate(req), timeout=self.timeout_s)
            except asyncio.TimeoutError:
                last = EngineError(f"timed out after {self.timeout_s} s", 504)
            except EngineError as exc:
                last = exc
                if exc.status not in RETRY_STATUS:
                    break
            else:
                self.stats.prompt_tokens += out.prompt_tokens
                self.stats.completion_tokens += out.completion_tokens
                return Result(out.text, list(out.logprobs or []), finish_reason=out.finish_reason, model=req.model)
            if retry < self.max_retries:
                self.stats.retries += 1
        self.stats.failures += 1
        assert last is not None
        last.attempts = attempts  # type: ignore[attr-defined]
        raise last

    async def achat_many(self, requests: Sequence[Mapping[str, Any]], progress: bool = False) -> list[Result | Failure]:
        """Answer a batch; never raises per item (as :meth:`ModelClient.achat_many`)."""
        sem = asyncio.Semaphore(self.max_concurrency)

        async def one(i: int, req: Mapping[str, Any]) -> Result | Failure:
            async with sem:
                try:
                    return await self.chat(**req)
                except EngineError as exc:
                    attempts = int(getattr(exc, "attempts", 1))
                    return Failure(index=i, reason=f"HTTP {exc.status}: {exc}", attempts=attempts, status=exc.status)

        return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(requests))))
