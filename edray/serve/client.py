"""The one client every stage uses to call a model (student, teacher, external endpoint).

:class:`ModelClient` speaks the OpenAI chat API over HTTP with bounded concurrency, retries with
exponential backoff and jitter (429, 5xx, timeouts, connection errors), a per-request timeout, token
accounting, and a persistent response cache keyed by the full request, so a resumed stage never pays
for the same answer twice. It holds no global state: a Ray Data actor builds its own from a plain
:class:`~edray.serve.config.ClientConfig`.

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
import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edray.serve.config import ClientConfig
from edray.serve.core import image_data_url, image_part, openai_messages, request_cache_key, user_message
from edray.serve.engine import TokenLogprob

__all__ = [
    "ClientConfig",
    "ClientStats",
    "Failure",
    "ModelCallError",
    "ModelClient",
    "ResponseCache",
    "Result",
    "image_data_url",
    "image_part",
    "openai_messages",
    "user_message",
]

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


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
    """

    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    cached: bool = False
    finish_reason: str = "stop"
    model: str = ""

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
    """Token and request accounting of one client."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    failures: int = 0
    cache_hits: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class ResponseCache:
    """A persistent map from request key to response body, in one sqlite file (WAL mode).

    Safe across processes and Ray workers on one node: each operation opens its own short
    transaction, and sqlite's WAL lets readers run beside the one writer.

    Args:
        folder: created if missing; the file is ``responses.sqlite`` inside it.
    """

    FILE = "responses.sqlite"

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.path = Path(folder) / self.FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT, body TEXT, created REAL)"
            )

    def _connect(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None or getattr(self._local, "pid", None) != os.getpid():
            con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            self._local.con = con
            self._local.pid = os.getpid()
        return con

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached body for ``key``, or None."""
        row = self._connect().execute("SELECT body FROM responses WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, model: str, body: dict[str, Any]) -> None:
        """Store a body (the first writer of a key wins; later writes of the same key are ignored)."""
        self._connect().execute(
            "INSERT OR IGNORE INTO responses (key, model, body, created) VALUES (?, ?, ?, ?)",
            (key, model, json.dumps(body, separators=(",", ":")), time.time()),
        )

    def __len__(self) -> int:
        return int(self._connect().execute("SELECT COUNT(*) FROM responses").fetchone()[0])


@dataclass
class _LoopState:
    loop: asyncio.AbstractEventLoop
    http: Any
    semaphore: asyncio.Semaphore


class ModelClient:
    """An async OpenAI-chat client with bounded concurrency, retries, accounting and a response cache.

    Args:
        config: endpoint, model, key variable, limits and cache folder.
        api_key: the key itself; by default read from ``config.api_key_env`` (no header when unset).
    """

    def __init__(self, config: ClientConfig, api_key: str | None = None) -> None:
        self.config = config
        self._api_key = api_key if api_key is not None else os.environ.get(config.api_key_env, "")
        self.cache = ResponseCache(config.cache_dir) if config.cache_dir else None
        self.stats = ClientStats()
        self._states: dict[int, _LoopState] = {}

    # --- plumbing -------------------------------------------------------------------------------

    def _state(self) -> _LoopState:
        """The HTTP client and semaphore of the running event loop (each loop gets its own)."""
        import httpx

        loop = asyncio.get_running_loop()
        state = self._states.get(id(loop))
        if state is None or state.loop is not loop:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            limits = httpx.Limits(max_connections=self.config.max_concurrency, max_keepalive_connections=self.config.max_concurrency)
            http = httpx.AsyncClient(
                base_url=self.config.base_url, headers=headers, timeout=self.config.timeout_s, limits=limits
            )
            state = _LoopState(loop=loop, http=http, semaphore=asyncio.Semaphore(self.config.max_concurrency))
            self._states[id(loop)] = state
        return state

    async def aclose(self) -> None:
        """Close the HTTP client of the running event loop."""
        state = self._states.pop(id(asyncio.get_running_loop()), None)
        if state is not None:
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
    ) -> dict[str, Any]:
        """The JSON body of one chat request (what the cache key is computed from)."""
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
        use_cache: bool = True,
    ) -> Result:
        """One chat completion.

        Deterministic requests (temperature 0, or a seed) are answered from the cache when present
        and stored in it after success; sampled requests without a seed always reach the server.

        Args:
            messages: OpenAI messages (build images with :func:`user_message` / :func:`image_part`).
            model: overrides ``config.model``.
            max_tokens, temperature, seed, logprobs, top_logprobs, response_format, stop: as in the
                OpenAI API.
            use_cache: consult and fill the response cache.

        Returns:
            The answer.

        Raises:
            ModelCallError: a non-retryable answer (4xx other than 429) or retries exhausted.
        """
        import httpx

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
        )
        cacheable = use_cache and self.cache is not None and (temperature == 0 or seed is not None)
        key = request_cache_key(body, self.config.base_url) if cacheable else ""
        if cacheable:
            hit = await asyncio.to_thread(self.cache.get, key)  # type: ignore[union-attr]
            if hit is not None:
                self.stats.cache_hits += 1
                return _parse_response(hit, cached=True)
        state = self._state()
        attempts = 0
        last_reason = ""
        last_status: int | None = None
        async with state.semaphore:
            for retry in range(self.config.max_retries + 1):
                attempts += 1
                self.stats.requests += 1
                retry_after = None
                try:
                    resp = await state.http.post("/chat/completions", json=body, timeout=self.config.timeout_s)
                except httpx.TimeoutException:
                    last_reason, last_status = f"timed out after {self.config.timeout_s} s", None
                except httpx.TransportError as exc:
                    last_reason, last_status = f"connection error: {type(exc).__name__}: {exc}", None
                else:
                    last_status = resp.status_code
                    if resp.status_code == 200:
                        try:
                            data = resp.json()
                            result = _parse_response(data, cached=False)
                        except (ValueError, KeyError, IndexError, TypeError) as exc:
                            last_reason = f"malformed response: {type(exc).__name__}: {exc}"
                        else:
                            self.stats.prompt_tokens += int(result.usage.get("prompt_tokens", 0))
                            self.stats.completion_tokens += int(result.usage.get("completion_tokens", 0))
                            if cacheable:
                                await asyncio.to_thread(self.cache.put, key, body["model"], data)  # type: ignore[union-attr]
                            return result
                    else:
                        last_reason = f"HTTP {resp.status_code}: {_error_message(resp)}"
                        if resp.status_code not in _RETRY_STATUS:
                            self.stats.failures += 1
                            raise ModelCallError(last_reason, attempts, resp.status_code)
                        retry_after = resp.headers.get("retry-after")
                if retry < self.config.max_retries:
                    self.stats.retries += 1
                    await asyncio.sleep(self._backoff(retry, retry_after))
        self.stats.failures += 1
        raise ModelCallError(last_reason, attempts, last_status)

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


def _parse_response(data: Mapping[str, Any], cached: bool) -> Result:
    choice = data["choices"][0]
    logprobs: list[TokenLogprob] = []
    content = (choice.get("logprobs") or {}).get("content") or []
    for item in content:
        top = [(t["token"], float(t["logprob"])) for t in item.get("top_logprobs") or []]
        logprobs.append(TokenLogprob(item["token"], float(item["logprob"]), top))
    usage = data.get("usage") or {}
    return Result(
        text=choice["message"].get("content") or "",
        logprobs=logprobs,
        usage={k: int(usage.get(k) or 0) for k in ("prompt_tokens", "completion_tokens")},
        cached=cached,
        finish_reason=choice.get("finish_reason") or "stop",
        model=str(data.get("model", "")),
    )
