"""The one client every stage uses to call a model (student, teacher, external endpoint, in-process engine).

:class:`ModelClient` speaks the OpenAI chat API with bounded concurrency, retries with exponential
backoff and jitter (:data:`RETRY_STATUS`, timeouts, connection errors), a per-request timeout, token
accounting, and a persistent response cache keyed by the full request, so a resumed stage never pays
for the same answer twice. It holds no global state: a Ray Data actor builds its own from a plain
:class:`~edray.serve.config.ClientConfig`.

The transport is HTTP (``config.base_url``) or an in-process :class:`~edray.serve.engine.Engine`
(``config.engine``, an import path, or an engine object passed in): the engine sees the request after
the server's own parser, so it answers exactly as it would behind ``edray serve``, and retries, the
cache and the accounting are the same code for both.

Example::

    client = ModelClient(ClientConfig(base_url="http://127.0.0.1:8000/v1", model="teacher",
                                      cache_dir="runs/x/cache"))
    out = client.chat_many([{"messages": [user_message("Which option?", [png_bytes])],
                             "logprobs": True, "top_logprobs": 5, "max_tokens": 1}])
    for r in out:
        print(r.text if isinstance(r, Result) else r.reason)
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edray.serve.cache import ResponseCache
from edray.serve.replies import ClientStats, Failure, ModelCallError, Result, parse_response
from edray.serve.config import ClientConfig, LimitsConfig
from edray.serve.core import (
    ApiError,
    chat_response,
    image_data_url,
    image_part,
    openai_messages,
    parse_chat_body,
    request_cache_key,
    user_message,
)
from edray.serve.engine import Engine, EngineError

__all__ = [
    "ClientConfig",
    "ClientStats",
    "Failure",
    "ModelCallError",
    "ModelClient",
    "ResponseCache",
    "RETRY_STATUS",
    "Result",
    "image_data_url",
    "image_part",
    "openai_messages",
    "user_message",
]

# The statuses worth another attempt: timeouts, conflicts, rate limits and server-side failures. Every
# other 4xx is the request's own fault and fails at once.
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass
class _LoopState:
    loop: asyncio.AbstractEventLoop
    http: Any
    semaphore: asyncio.Semaphore


class ModelClient:
    """An async OpenAI-chat client with bounded concurrency, retries, accounting and a response cache.

    Args:
        config: endpoint (or in-process engine), model, key variable, limits and cache folder.
        api_key: the key itself; by default read from ``config.api_key_env`` (no header when unset).
        engine: an in-process engine to call instead of ``config.base_url`` (overrides ``config.engine``).
    """

    def __init__(self, config: ClientConfig, api_key: str | None = None, engine: Engine | None = None) -> None:
        self.config = config
        self._api_key = api_key if api_key is not None else os.environ.get(config.api_key_env, "")
        self.cache = ResponseCache(config.cache_dir) if config.cache_dir else None
        self.stats = ClientStats()
        self._states: dict[int, _LoopState] = {}
        if engine is None and config.engine:
            from edray.serve.engines import load_engine

            engine = load_engine(config.engine, config.model, config.engine_options)
        self.engine = engine
        self._features: dict[str, bool] = {}
        self._limits = LimitsConfig(max_tokens=1_000_000, max_total_tokens=10_000_000)
        # Where cached answers came from: the endpoint, or the engine's import path for in-process calls.
        self._cache_scope = f"engine:{config.engine or type(engine).__qualname__}" if engine is not None else config.base_url

    # --- plumbing -------------------------------------------------------------------------------

    def _state(self) -> _LoopState:
        """The HTTP client and semaphore of the running event loop (each loop gets its own)."""
        loop = asyncio.get_running_loop()
        state = self._states.get(id(loop))
        if state is None or state.loop is not loop:
            http = None
            if self.engine is None:
                import httpx

                headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
                n = self.config.max_concurrency
                http = httpx.AsyncClient(
                    base_url=self.config.base_url, headers=headers, timeout=self.config.timeout_s,
                    limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
                )
            state = _LoopState(loop=loop, http=http, semaphore=asyncio.Semaphore(self.config.max_concurrency))
            self._states[id(loop)] = state
        return state

    async def aclose(self) -> None:
        """Close the HTTP client of the running event loop."""
        state = self._states.pop(id(asyncio.get_running_loop()), None)
        if state is not None and state.http is not None:
            await state.http.aclose()

    def payload(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
        logprobs: bool = False,
        top_logprobs: int = 0,
        response_format: Mapping[str, Any] | None = None,
        stop: Sequence[str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The JSON body of one chat request (what the cache key is computed from).

        ``extra_body`` holds server-specific fields merged into the body as is (vLLM's
        ``structured_outputs``, ``prompt_logprobs``, ``continue_final_message``...).
        """
        body: dict[str, Any] = {
            "model": model or self.config.model,
            "messages": [dict(m) for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if seed is not None:
            body["seed"] = seed
        if logprobs:
            body["logprobs"] = True
            if top_logprobs:
                body["top_logprobs"] = top_logprobs
        if response_format is not None:
            body["response_format"] = dict(response_format)
        if stop:
            body["stop"] = list(stop)
        for key, value in (extra_body or {}).items():
            body.setdefault(key, value)
        return body

    def _backoff(self, retry: int, retry_after: str | None) -> float:
        cap = self.config.backoff_max_s
        if retry_after:
            try:
                return min(cap, max(0.0, float(retry_after)))
            except ValueError:
                pass
        delay = min(cap, self.config.backoff_s * (2**retry))
        # Jitter spreads the retries of many clients that failed together.
        return delay * (0.5 + random.random() / 2)

    # --- transports -----------------------------------------------------------------------------

    async def _send(self, state: _LoopState, body: dict[str, Any]) -> tuple[int | None, Any, str, str | None]:
        """One attempt: ``(status, response body or None, failure reason, retry-after header)``.

        ``status`` is ``None`` for a timeout or a connection error.
        """
        if self.engine is not None:
            return await self._send_engine(body)
        import httpx

        try:
            resp = await state.http.post("/chat/completions", json=body, timeout=self.config.timeout_s)
        except httpx.TimeoutException:
            return None, None, f"timed out after {self.config.timeout_s} s", None
        except httpx.TransportError as exc:
            return None, None, f"connection error: {type(exc).__name__}: {exc}", None
        if resp.status_code != 200:
            return resp.status_code, None, f"HTTP {resp.status_code}: {_error_message(resp)}", resp.headers.get("retry-after")
        try:
            return 200, resp.json(), "", None
        except ValueError as exc:
            return 200, None, f"malformed response: {type(exc).__name__}: {exc}", None

    async def _send_engine(self, body: dict[str, Any]) -> tuple[int | None, Any, str, str | None]:
        assert self.engine is not None
        try:
            parsed = parse_chat_body(body, self._limits)
        except ApiError as exc:
            return exc.status, None, f"HTTP {exc.status}: {exc.message}", None
        request = parsed.request
        request.images = [r for r in parsed.image_refs if isinstance(r, bytes)]
        try:
            out = await asyncio.wait_for(self.engine.generate(request), timeout=self.config.timeout_s)
        except asyncio.TimeoutError:
            return None, None, f"timed out after {self.config.timeout_s} s", None
        except EngineError as exc:
            return exc.status, None, f"HTTP {exc.status}: {exc}", None
        return 200, chat_response(out, request.model, "inprocess", created=0), "", None

    # --- calls ----------------------------------------------------------------------------------

    async def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
        logprobs: bool = False,
        top_logprobs: int = 0,
        response_format: Mapping[str, Any] | None = None,
        stop: Sequence[str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        use_cache: bool = True,
    ) -> Result:
        """One chat completion.

        Deterministic requests (temperature 0, or a seed) are answered from the cache when present
        and stored in it after success; sampled requests without a seed always reach the model.

        Args:
            messages: OpenAI messages (build images with :func:`user_message` / :func:`image_part`).
            model: overrides ``config.model``.
            max_tokens, temperature, seed, logprobs, top_logprobs, response_format, stop: as in the
                OpenAI API.
            extra_body: server-specific fields added to the body.
            use_cache: consult and fill the response cache.

        Returns:
            The answer.

        Raises:
            ModelCallError: a non-retryable answer (a status outside :data:`RETRY_STATUS`) or retries
                exhausted.
        """
        body = self.payload(
            messages,
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            response_format=response_format,
            stop=stop,
            extra_body=extra_body,
        )
        cacheable = use_cache and self.cache is not None and (temperature == 0 or seed is not None)
        key = request_cache_key(body, self._cache_scope) if cacheable else ""
        if cacheable:
            hit = await asyncio.to_thread(self.cache.get, key)  # type: ignore[union-attr]
            if hit is not None:
                self.stats.cache_hits += 1
                return parse_response(hit, cached=True)
        state = self._state()
        attempts = 0
        reason = ""
        status: int | None = None
        async with state.semaphore:
            for retry in range(self.config.max_retries + 1):
                attempts += 1
                self.stats.requests += 1
                status, data, reason, retry_after = await self._send(state, body)
                if status == 200 and data is not None:
                    try:
                        result = parse_response(data, cached=False)
                    except (ValueError, KeyError, IndexError, TypeError) as exc:
                        reason = f"malformed response: {type(exc).__name__}: {exc}"
                    else:
                        self.stats.prompt_tokens += int(result.usage.get("prompt_tokens", 0))
                        self.stats.completion_tokens += int(result.usage.get("completion_tokens", 0))
                        if cacheable:
                            await asyncio.to_thread(self.cache.put, key, body["model"], data)  # type: ignore[union-attr]
                        return result
                elif status is not None and status != 200 and status not in RETRY_STATUS:
                    self.stats.failures += 1
                    raise ModelCallError(reason, attempts, status)
                if retry < self.config.max_retries:
                    self.stats.retries += 1
                    await asyncio.sleep(self._backoff(retry, retry_after))
        self.stats.failures += 1
        raise ModelCallError(reason, attempts, status)

    async def supports(self, feature: str) -> bool:
        """Whether the endpoint (or engine) offers a feature beyond the OpenAI basics; probed once per client.

        Features:
            ``choice``: vLLM structured outputs constrain the reply to a list of strings
                (``extra_body={"structured_outputs": {"choice": [...]}}``), with logprobs;
            ``likelihood``: vLLM scores a given continuation: the last message is the assistant's
                (``continue_final_message``) and ``prompt_logprobs`` come back;
            ``json_schema``: a JSON-schema ``response_format`` is enforced, not just requested.

        Each probe asks for something a model would not write unconstrained (the choice ``Q``/``Z`` in
        reply to "say hello", an enum value ``zqx``), so a server that ignores the field fails it.
        """
        if feature not in self._features:
            self._features[feature] = await self._probe(feature)
        return self._features[feature]

    async def _probe(self, feature: str) -> bool:
        from edray.serve.probes import probe

        # A probe is accounted as a probe, not as one of the stage's requests or failures.
        before = (self.stats.requests, self.stats.failures, self.stats.retries)
        try:
            return await probe(self, feature)
        finally:
            self.stats.requests, self.stats.failures, self.stats.retries = before
            self.stats.probes += 1

    def forget(self, request: Mapping[str, Any]) -> None:
        """Drop the cached answer of one request (a reply its reader could not use is not worth keeping)."""
        if self.cache is None:
            return
        kwargs = {k: v for k, v in request.items() if k != "use_cache"}
        self.cache.delete(request_cache_key(self.payload(**kwargs), self._cache_scope))

    async def achat_many(
        self, requests: Sequence[Mapping[str, Any]], progress: bool = True
    ) -> list[Result | Failure]:
        """Async form of :meth:`chat_many`."""
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(requests), desc=f"{self.config.model}", unit="req")

        async def one(i: int, req: Mapping[str, Any]) -> Result | Failure:
            try:
                if "messages" not in req:
                    raise ModelCallError("request has no 'messages'", 0)
                return await self.chat(**req)
            except ModelCallError as exc:
                return Failure(index=i, reason=exc.reason, attempts=exc.attempts, status=exc.status)
            except TypeError as exc:  # an unknown keyword in the request mapping
                return Failure(index=i, reason=f"invalid request: {exc}", attempts=0)
            finally:
                if bar is not None:
                    bar.update(1)

        try:
            return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(requests))))
        finally:
            if bar is not None:
                bar.close()
            await self.aclose()

    def chat_many(self, requests: Sequence[Mapping[str, Any]], progress: bool = True) -> list[Result | Failure]:
        """Answer a batch; never raises per item.

        Args:
            requests: one mapping of :meth:`chat` keyword arguments per request (``messages`` required).
            progress: show a progress bar.

        Returns:
            One :class:`Result` or :class:`Failure` per request, in request order.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.achat_many(requests, progress))
        # Called from inside a running loop (an async actor, a notebook): run on a private loop.
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["out"] = asyncio.run(self.achat_many(requests, progress))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                box["err"] = exc

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join()
        if "err" in box:
            raise box["err"]
        return box["out"]


def _error_message(resp: Any) -> str:
    try:
        err = resp.json().get("error")
        if isinstance(err, dict):
            return str(err.get("message", err))
        if err:
            return str(err)
    except ValueError:
        pass
    return resp.text[:300]
