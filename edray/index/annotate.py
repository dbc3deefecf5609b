"""Skill annotation of the supporting pool (docs/method.md section 1, step 4): the annotator actors.

Two backends feed the index pipeline:

- :class:`SkillAnnotator`, a Ray Data actor that asks the teacher through
  :class:`~edray.serve.client.ModelClient`: an OpenAI-compatible endpoint (``annotate.backend: http``,
  the default: ``annotate.base_url``) or an engine in the actor's process (``annotate.backend: engine``,
  loaded by import path from ``annotate.engine``, e.g. the skills world's teacher). One client, one
  retry policy, for both.
- :func:`annotate_with_vllm`, ``ray.data.llm`` with one vLLM engine per GPU actor (``annotate.backend: vllm``).

Replies are JSON following :data:`~edray.index.prompts.ANNOTATION_SCHEMA` where the endpoint enforces
JSON schemas (``annotate.structured``), otherwise free text from which short skill phrases are
extracted (:func:`edray.index.prompts.parse_annotation`). A reply with no usable phrase, or a request
that still fails after its retries, marks the row ``annotation_failed`` with the reason.
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa

from edray.aio import run_sync
from edray.config import ConfigError
from edray.index import core
from edray.index.config import AnnotateConfig
from edray.index.prompts import ANNOTATION_SCHEMA, annotation_messages, json_schema_format


def annotate_messages(cfg: AnnotateConfig, instruction: str, answer: str) -> list[dict[str, str]]:
    """The annotation prompt of one sample, with the configured system message and question."""
    return annotation_messages(instruction, answer, system=cfg.system, question=cfg.question)


class SkillAnnotator:
    """Annotates the new rows of a stream batch with skills; loads its teacher and cache once.

    Cache hits (by content hash of instruction + answer + teacher model + prompt version) skip the
    teacher; a request that still fails after its retries marks the row ``annotation_failed`` with
    the reason, so it is recorded and retried by the next run, never dropped silently.
    """

    def __init__(self, cfg: AnnotateConfig, db_uri: str, storage_options: dict[str, str], cache_name: str) -> None:
        from edray.index.store import connect, open_table

        self.cfg = cfg
        self.cache = open_table(connect(db_uri, storage_options), cache_name) if cfg.use_cache else None
        self.teacher = _make_teacher(cfg)
        # Annotations made by this actor in this run: the persistent cache only learns them when the
        # driver commits, and identical samples recur across batches (same template, other image).
        self.memo: dict[str, list[str]] = {}

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        n = batch.num_rows
        status = batch.column("status").to_pylist()
        instructions = batch.column("instruction").to_pylist()
        answers = batch.column("answer").to_pylist()
        reasons = batch.column("reason").to_pylist()
        keys: list[str | None] = [None] * n
        skills: list[list[str] | None] = [None] * n
        hits: list[bool | None] = [None] * n
        asked: list[bool | None] = [None] * n
        todo = [i for i in range(n) if status[i] == core.STATUS_OK]
        for i in todo:
            keys[i] = core.annotation_key(instructions[i] or "", answers[i] or "", self.cfg.model, self.cfg.prompt_version)
        from edray.index.store import lookup_cache

        if self.cfg.use_cache:
            cached = dict(self.memo)
            cached.update(lookup_cache(self.cache, sorted({keys[i] for i in todo} - set(self.memo))))
        else:
            cached = {}
        ask: dict[str, list[int]] = {}
        for i in todo:
            if keys[i] in cached:
                skills[i], hits[i], asked[i] = list(cached[keys[i]]), True, False
            else:
                ask.setdefault(keys[i], []).append(i)
        if ask:
            firsts = [rows[0] for rows in ask.values()]
            answers_out = self.teacher([(instructions[i] or "", answers[i] or "") for i in firsts])
            for key, rows, out in zip(ask.keys(), ask.values(), answers_out):
                for j, i in enumerate(rows):
                    asked[i] = j == 0
                    if isinstance(out, str):
                        status[i], reasons[i] = core.STATUS_ANNOTATION_FAILED, out
                    else:
                        skills[i], hits[i] = out, j > 0
                if not isinstance(out, str) and self.cfg.use_cache and len(self.memo) < 200_000:
                    self.memo[key] = out
        per_row = (time.perf_counter() - started) / max(len(todo), 1)
        out_tbl = batch.set_column(batch.schema.get_field_index("status"), "status", pa.array(status, pa.string()))
        out_tbl = out_tbl.set_column(out_tbl.schema.get_field_index("reason"), "reason", pa.array(reasons, pa.string()))
        st = [core.skill_text(s) if s else None for s in skills]
        cols = {
            "skills": pa.array(skills, pa.list_(pa.string())),
            "skill_text": pa.array(st, pa.string()),
            "annotation_key": pa.array(keys, pa.string()),
            "cache_hit": pa.array(hits, pa.bool_()),
            "teacher_request": pa.array(asked, pa.bool_()),
            "annotate_s": pa.array([per_row if s == core.STATUS_OK or s == core.STATUS_ANNOTATION_FAILED else 0.0
                                    for s in status], pa.float64()),
        }
        for f in core.ANNOTATED_FIELDS:
            out_tbl = out_tbl.append_column(f, cols[f.name])
        return out_tbl


def client_config(cfg: AnnotateConfig) -> Any:
    """The model client's settings for the annotation teacher (HTTP endpoint or in-process engine)."""
    from edray.serve.config import ClientConfig

    return ClientConfig(
        base_url=cfg.base_url,
        model=cfg.model,
        api_key_env=cfg.api_key_env,
        max_concurrency=cfg.concurrency,
        timeout_s=cfg.timeout_s,
        max_retries=cfg.max_retries,
        backoff_s=cfg.backoff_s,
        engine=cfg.engine if cfg.backend == "engine" else None,
        engine_options=cfg.engine_options if cfg.backend == "engine" else {},
    )


def _make_teacher(cfg: AnnotateConfig) -> "ClientTeacher":
    if cfg.backend not in ("http", "engine"):
        raise ConfigError(f"annotate.backend={cfg.backend} is not an in-actor backend")
    return ClientTeacher(cfg)


class ClientTeacher:
    """``[(instruction, answer)] -> [skills | failure reason]`` through the model client.

    Args:
        cfg: the annotation settings.
        client: a client to use instead of one built from ``cfg`` (tests, benchmarks).
    """

    def __init__(self, cfg: AnnotateConfig, client: Any = None) -> None:
        from edray.serve.client import ModelClient

        self.cfg = cfg
        self.client = client or ModelClient(client_config(cfg))
        self._json: bool | None = None

    def wants_json(self) -> bool:
        """Ask for JSON-schema output: configured, or (``auto``) the endpoint enforces schemas (probed once)."""
        if self._json is None:
            if self.cfg.structured == "auto":
                self._json = run_sync(self.client.supports("json_schema"))
            else:
                self._json = self.cfg.structured == "json_schema"
        return self._json

    def __call__(self, pairs: list[tuple[str, str]]) -> list[list[str] | str]:
        from edray.serve.client import Result

        fmt = json_schema_format("skills", ANNOTATION_SCHEMA) if self.wants_json() else None
        requests = []
        for ins, ans in pairs:
            req: dict[str, Any] = {"messages": annotate_messages(self.cfg, ins, ans), "max_tokens": self.cfg.max_tokens}
            if fmt is not None:
                req["response_format"] = fmt
            requests.append(req)
        out: list[list[str] | str] = []
        for req, res in zip(requests, self.client.chat_many(requests, progress=False)):
            if isinstance(res, Result):
                parsed = _parse(res.text, self.cfg)
                if isinstance(parsed, str):
                    # An unusable reply is not worth keeping: the next run asks again.
                    self.client.forget(req)
                out.append(parsed)
            else:
                out.append(f"teacher request failed after {res.attempts} attempt(s): {res.reason}")
        return out


def _parse(text: str, cfg: AnnotateConfig) -> list[str] | str:
    try:
        return core.parse_skills(text, cfg.max_skills, cfg.max_words)
    except ValueError as exc:
        return f"unparseable teacher answer: {exc}"


def annotate_with_vllm(ds: Any, config: IndexConfig, db_uri: str) -> Any:
    """Annotate through ``ray.data.llm``: one vLLM engine per GPU actor (GPU clusters only).

    Cache hits are looked up first; rows that need no teacher (hits, known and quarantined rows) still
    pass through the processor, as a one-token request, because a processor maps every row.

    Raises:
        ConfigError: the cluster has fewer GPUs than one engine needs.
    """
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    a = config.annotate
    if ray.cluster_resources().get("GPU", 0) < a.vllm_gpus_per_actor:
        raise ConfigError(
            f"annotate.backend=vllm needs {a.vllm_gpus_per_actor} GPU(s) per engine and the cluster has "
            f"{ray.cluster_resources().get('GPU', 0)}; use annotate.backend=http with an OpenAI-compatible server "
            "(for example vLLM's, on CPU) or annotate.backend=engine"
        )
    ds = ds.map_batches(
        _CacheLookup,
        fn_constructor_kwargs={"cfg": a, "db_uri": db_uri, "storage_options": config.store.storage_options,
                               "cache_name": config.store.cache_table},
        batch_format="pyarrow",
        batch_size=a.batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1),
        num_cpus=a.num_cpus,
    )
    processor = build_processor(
        vLLMEngineProcessorConfig(
            model_source=a.model,
            engine_kwargs={"tensor_parallel_size": a.vllm_gpus_per_actor, **a.vllm_engine_kwargs},
            concurrency=a.actors,
            batch_size=a.batch_size,
        ),
        preprocess=lambda row: _vllm_preprocess(row, a),
        postprocess=lambda row: _vllm_postprocess(row, a.max_skills),
    )
    return processor(ds)


class _CacheLookup:
    def __init__(self, cfg: AnnotateConfig, db_uri: str, storage_options: dict[str, str], cache_name: str) -> None:
        from edray.index.store import connect, open_table

        self.cfg = cfg
        self.cache = open_table(connect(db_uri, storage_options), cache_name) if cfg.use_cache else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        from edray.index.store import lookup_cache

        status = batch.column("status").to_pylist()
        ins, ans = batch.column("instruction").to_pylist(), batch.column("answer").to_pylist()
        keys = [core.annotation_key(i or "", a or "", self.cfg.model, self.cfg.prompt_version) if s == core.STATUS_OK else None
                for s, i, a in zip(status, ins, ans)]
        cached = lookup_cache(self.cache, sorted({k for k in keys if k})) if self.cache is not None else {}
        skills = [cached.get(k) if k else None for k in keys]
        out = batch.append_column("annotation_key", pa.array(keys, pa.string()))
        out = out.append_column("skills", pa.array(skills, pa.list_(pa.string())))
        return out.append_column("cache_hit", pa.array([s is not None if k else None for k, s in zip(keys, skills)], pa.bool_()))


def _vllm_preprocess(row: dict[str, Any], cfg: AnnotateConfig) -> dict[str, Any]:
    needs = row["status"] == core.STATUS_OK and not row["cache_hit"]
    messages = annotate_messages(cfg, row["instruction"] or "", row["answer"] or "") if needs else [{"role": "user", "content": "."}]
    return {**row, "messages": messages,
            "sampling_params": {"temperature": 0.0, "max_tokens": cfg.max_tokens if needs else 1},
            "_orig_messages": row["messages"]}


def _vllm_postprocess(row: dict[str, Any], max_skills: int) -> dict[str, Any]:
    status, reason, skills = row["status"], row["reason"], row["skills"]
    if status == core.STATUS_OK and not row["cache_hit"]:
        try:
            skills = core.parse_skills(row.get("generated_text") or "", max_skills)
        except ValueError as exc:
            status, reason = core.STATUS_ANNOTATION_FAILED, f"unparseable teacher answer: {exc}"
    keep = {f.name for f in core.STREAM_SCHEMA} - {"messages"}
    out = {k: row[k] for k in keep}
    out.update(messages=row["_orig_messages"], status=status, reason=reason, skills=skills,
               skill_text=core.skill_text(skills) if skills else None, annotation_key=row["annotation_key"],
               cache_hit=row["cache_hit"], teacher_request=row["status"] == core.STATUS_OK and not row["cache_hit"],
               annotate_s=0.0)
    return out


