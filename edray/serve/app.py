"""The Ray Serve application: one HTTP ingress in front of one deployment per served model.

Routes (OpenAI-compatible; every ``/v1`` route needs ``Authorization: Bearer <key>``):

- ``GET /v1/models``: every served name (base models, then their LoRA adapters).
- ``POST /v1/chat/completions``: text and images (base64 data URLs; http(s) URLs only when the config
  allows fetching), ``max_tokens``, ``temperature``, ``seed``, ``logprobs`` + ``top_logprobs``,
  ``stop``, ``response_format`` where the engine supports it, ``stream`` (server-sent events).
- ``GET /health`` (the process answers) and ``GET /ready`` (every model deployment answers): no key.

Each model runs in its own deployment (its own CPUs/GPUs and replicas): :class:`ModelServer` for the
in-process engines (transformers, the world teacher), ``ray.serve.llm``'s ``LLMServer`` for vLLM. The
ingress checks the key and the limits, decodes images and routes by the request's ``model`` field.
The ingress never sees the API key itself, only its SHA-256 digest.
"""

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations at runtime, and
# with string annotations some fastapi/pydantic releases take `request: Request` for a required query
# parameter (every call then answers 422).

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from edray.serve.config import LimitsConfig, ModelConfig, ServeConfig
from edray.serve.core import (
    ApiError,
    ParsedChat,
    chat_response,
    check_image,
    error_body,
    new_request_id,
    parse_chat_body,
    sse,
    stream_chunk,
)
from edray.serve.engine import ChatRequest, ChatResult, Engine, EngineError


def make_engine(model: ModelConfig, limits: LimitsConfig) -> Engine:
    """Build the in-process engine a :class:`ModelServer` replica runs.

    Raises:
        EngineError: the engine kind runs elsewhere (vllm) or its model cannot load.
    """
    if model.engine == "transformers":
        from edray.serve.transformers_engine import TransformersEngine

        return TransformersEngine(
            name=model.name,
            path=str(model.path),
            adapters={a.name: a.path for a in model.adapters},
            trust_remote_code=model.trust_remote_code,
            dtype=model.dtype,
            max_total_tokens=limits.max_total_tokens,
            torch_threads=model.torch_threads,
        )
    if model.by_import_path:
        from edray.serve.engines import load_engine

        return load_engine(model.engine, model.name, model.options)
    raise EngineError(f"model {model.name!r}: engine {model.engine!r} does not run inside a ModelServer", 500)


@serve.deployment(name="model", health_check_period_s=10, graceful_shutdown_timeout_s=5)
class ModelServer:
    """A deployment running one in-process engine. Engine refusals come back as values, not raises,
    so the ingress can answer them with their status (exceptions crossing a handle lose it)."""

    def __init__(self, model: ModelConfig, limits: LimitsConfig) -> None:
        self.engine = make_engine(model, limits)

    def model_ids(self) -> list[str]:
        return self.engine.model_ids()

    async def generate(self, request: ChatRequest) -> ChatResult | tuple[int, str]:
        try:
            return await self.engine.generate(request)
        except EngineError as exc:
            return (exc.status, str(exc))

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | tuple[int, str]]:
        try:
            async for piece in self.engine.stream(request):
                yield piece
        except EngineError as exc:
            yield (exc.status, str(exc))


class HandleEngine:
    """The ingress's view of a :class:`ModelServer` deployment, as an :class:`Engine`."""

    def __init__(self, handle: DeploymentHandle, names: list[str]) -> None:
        self.handle = handle
        self.names = names
        self.stream_handle = handle.options(stream=True)

    def model_ids(self) -> list[str]:
        return list(self.names)

    async def generate(self, request: ChatRequest) -> ChatResult:
        out = await self.handle.generate.remote(request)
        if isinstance(out, tuple):
            raise EngineError(out[1], status=out[0])
        return out

    async def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        async for piece in self.stream_handle.stream.remote(request):
            if isinstance(piece, tuple):
                raise EngineError(piece[1], status=piece[0])
            yield piece

    async def ready(self) -> bool:
        return bool(await self.handle.model_ids.remote())


fastapi_app = FastAPI(title="edray", docs_url=None, redoc_url=None, openapi_url=None)


@fastapi_app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """Any unexpected failure still answers in the OpenAI error shape (and the server keeps serving)."""
    return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


@serve.deployment(name="ingress", graceful_shutdown_timeout_s=5)
@serve.ingress(fastapi_app)
class Ingress:
    """HTTP front: API key, limits, image decoding, routing by model name, response shapes.

    Args:
        config: the serve config (models, limits).
        api_key_sha256: hex SHA-256 of the API key clients must send.
        backends: one handle per served model, in ``config.models`` order (ModelServer or LLMServer).
    """

    def __init__(self, config: ServeConfig, api_key_sha256: str, *backends: DeploymentHandle) -> None:
        from edray.serve.vllm_engine import VllmEngine

        self.config = config
        self.limits = config.limits
        self._key_digest = bytes.fromhex(api_key_sha256)
        self.engines: dict[str, Any] = {}
        self.backends: list[Any] = []
        for model, handle in zip(config.models, backends):
            names = [model.name, *(a.name for a in model.adapters)]
            engine: Any
            if model.engine == "vllm":
                engine = VllmEngine(handle, model.name, [a.name for a in model.adapters])
            else:
                engine = HandleEngine(handle, names)
            self.backends.append(engine)
            for name in names:
                self.engines[name] = engine
        self.started = int(time.time())

    # --- checks ---------------------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing API key: send Authorization: Bearer <key>", code="invalid_api_key")
        digest = hashlib.sha256(token.strip().encode()).digest()
        if not hmac.compare_digest(digest, self._key_digest):
            raise ApiError(401, "invalid API key", code="invalid_api_key")

    async def _read_body(self, request: Request) -> Any:
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body of {declared} bytes; the limit is {limit} bytes", code="body_too_large")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"request body over the limit of {limit} bytes", code="body_too_large")
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"request body is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None

    async def _fetch_image(self, url: str, index: int) -> bytes:
        import httpx

        limit = self.limits.max_image_bytes
        try:
            async with httpx.AsyncClient(timeout=self.limits.image_url_timeout_s, follow_redirects=True) as client:
                async with client.stream("GET", url) as resp:
                    if resp.status_code != 200:
                        raise ApiError(400, f"images[{index}]: fetching {url} answered HTTP {resp.status_code}")
                    data = bytearray()
                    async for chunk in resp.aiter_bytes():
                        data.extend(chunk)
                        if len(data) > limit:
                            raise ApiError(
                                413, f"images[{index}]: over the limit of {limit} bytes", code="image_too_large"
                            )
                    return bytes(data)
        except httpx.HTTPError as exc:
            raise ApiError(400, f"images[{index}]: could not fetch {url} ({type(exc).__name__})") from None

    async def _prepare(self, body: Any) -> tuple[ParsedChat, Any]:
        parsed = parse_chat_body(body, self.limits)
        engine = self.engines.get(parsed.request.model)
        if engine is None:
            raise ApiError(
                404,
                f"model {parsed.request.model!r} is not served here; served: {sorted(self.engines)}",
                param="model",
                code="model_not_found",
            )
        images: list[bytes] = []
        for i, ref in enumerate(parsed.image_refs):
            data = ref if isinstance(ref, bytes) else await self._fetch_image(ref, i)
            check_image(data, self.limits, i)
            images.append(data)
        parsed.request.images = images
        return parsed, engine

    # --- routes ---------------------------------------------------------------------------------

    @fastapi_app.get("/health")
    async def health(self) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @fastapi_app.get("/ready")
    async def ready(self) -> JSONResponse:
        try:
            await asyncio.wait_for(asyncio.gather(*(b.ready() for b in self.backends)), timeout=10)
        except Exception as exc:  # noqa: BLE001 - any backend failure means not ready
            return JSONResponse({"status": "not ready", "reason": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ready", "models": sorted(self.engines)})

    @fastapi_app.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        try:
            self._authorize(request)
        except ApiError as exc:
            return _error(exc)
        data = []
        for model in self.config.models:
            data.append({"id": model.name, "object": "model", "created": self.started, "owned_by": "edray", "root": model.name, "parent": None})
            for adapter in model.adapters:
                data.append({"id": adapter.name, "object": "model", "created": self.started, "owned_by": "edray", "root": model.name, "parent": model.name})
        return JSONResponse({"object": "list", "data": data})

    @fastapi_app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Any:
        try:
            self._authorize(request)
            body = await self._read_body(request)
            parsed, engine = await self._prepare(body)
        except ApiError as exc:
            return _error(exc)
        req = parsed.request
        request_id = new_request_id()
        if parsed.stream:
            return await self._stream(engine, parsed, request_id)
        try:
            result = await asyncio.wait_for(engine.generate(req), timeout=self.config.request_timeout_s)
        except EngineError as exc:
            return _error(ApiError(exc.status, str(exc)))
        except asyncio.TimeoutError:
            return _error(ApiError(504, f"the model did not answer within {self.config.request_timeout_s} s"))
        return JSONResponse(chat_response(result, req.model, request_id))

    async def _stream(self, engine: Any, parsed: ParsedChat, request_id: str) -> Any:
        req = parsed.request
        created = int(time.time())
        pieces = engine.stream(req).__aiter__()
        # Pull the first delta before answering 200, so refusals still get their 4xx status.
        try:
            first: str | None = await asyncio.wait_for(pieces.__anext__(), timeout=self.config.request_timeout_s)
        except StopAsyncIteration:
            first = None
        except EngineError as exc:
            return _error(ApiError(exc.status, str(exc)))
        except asyncio.TimeoutError:
            return _error(ApiError(504, f"the model did not answer within {self.config.request_timeout_s} s"))

        async def events() -> AsyncIterator[bytes]:
            yield sse(stream_chunk(request_id, req.model, created, {"role": "assistant", "content": ""}))
            try:
                if first is not None:
                    yield sse(stream_chunk(request_id, req.model, created, {"content": first}))
                    async for piece in pieces:
                        yield sse(stream_chunk(request_id, req.model, created, {"content": piece}))
            except EngineError as exc:
                yield sse(error_body(str(exc), "server_error"))
                return
            yield sse(stream_chunk(request_id, req.model, created, {}, finish_reason="stop"))
            yield sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")


def build_app(config: ServeConfig, api_key_sha256: str) -> Any:
    """The bound Serve application: one deployment per model, then the ingress.

    Args:
        config: the serve config; must name at least one model.
        api_key_sha256: hex SHA-256 digest of the API key (the key itself never leaves the caller).

    Returns:
        A bound application for ``serve.run``.

    Raises:
        ValueError: no models configured.
    """
    if not config.models:
        raise ValueError("models: at least one model must be served")
    backends = []
    for i, model in enumerate(config.models):
        if model.engine == "vllm":
            from edray.serve.vllm_engine import build_vllm_deployment

            backends.append(build_vllm_deployment(model, config.limits, index=i))
            continue
        options: dict[str, Any] = {"num_cpus": model.num_cpus}
        if model.num_gpus:
            options["num_gpus"] = model.num_gpus
        backends.append(
            ModelServer.options(
                name=f"model-{i}-{_slug(model.name)}",
                num_replicas=model.num_replicas,
                max_ongoing_requests=model.max_ongoing_requests,
                ray_actor_options=options,
            ).bind(model, config.limits)
        )
    ingress = Ingress.options(
        num_replicas=config.ingress_replicas,
        max_ongoing_requests=config.ingress_max_ongoing_requests,
        ray_actor_options={"num_cpus": config.ingress_num_cpus},
    )
    return ingress.bind(config, api_key_sha256, *backends)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:48]
