"""The evaluate stage: target gain and general retention of every model, side by side (docs/method.md §2, §3).

Inputs:
    - the target task's test split(s) and the general suite (Parquet, ``EVAL_SCHEMA``);
    - the base student and each tuned student or baseline arm: with ``backend: transformers`` model
      folders loaded in-process in serve's transformers engine (a full model folder, a peft adapter
      over the base, or a train stage folder holding ``adapter/`` or ``model/``); with
      ``backend: serve`` model names on an OpenAI-compatible endpoint reached through
      :class:`edray.serve.client.ModelClient`.
Outputs, in ``runs/<run>/round_<k>/evaluate/``:
    - ``predictions.parquet`` (``EVAL_PREDICTIONS_SCHEMA``): one scored answer per model, suite and row;
    - ``scores.parquet`` (``EVAL_SCORES_SCHEMA``): accuracy and standard error per model, suite, task and
      skill (``*`` = all);
    - ``manifest.json`` (its ``metrics.summary`` holds target accuracy, general accuracy, gain, retention
      and combined score per model) and ``_SUCCESS``.

Run it with::

    edray evaluate --config jobs/evaluate.yaml --run-dir runs/x [--set backend=serve] [--force]

A model call that fails is recorded in the row's ``failure`` column and scored wrong; the run goes on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from edray.aio import run_sync
from edray.data.parquet_rows import read_eval_rows
from edray.evaluate import core
from edray.evaluate.config import EvaluateConfig, GenerationConfig, ModelSpec
from edray.rundir import MANIFEST, Stage, StageDir, run_stage, version_stamp
from edray.schemas import (
    EVAL_PREDICTIONS,
    EVAL_PREDICTIONS_SCHEMA,
    EVAL_SCORES,
    EVAL_SCORES_SCHEMA,
    IMAGE_PLACEHOLDER,
    TRAIN_ADAPTER,
    TRAIN_MODEL,
)
from edray.serve.engine import ChatRequest, ChatResult

log = logging.getLogger(__name__)

STAGE = "evaluate"


# --- reading -----------------------------------------------------------------------------------------


def read_suite(paths: Sequence[str], limit: int | None = None, split: str | None = None) -> list[dict[str, Any]]:
    """Evaluation rows from one or more Parquet files or folders, in a stable order (by id); see
    :func:`edray.data.parquet_rows.read_eval_rows`.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a required column is missing, an id repeats, or no row is left.
    """
    return read_eval_rows(list(paths), "evaluation split(s)", split=split, limit=limit)


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's weights are: a model folder and optionally a peft adapter over it."""

    name: str
    arm: str
    path: str | None
    adapter: str | None
    served_name: str


def resolve_model(spec: ModelSpec, base: ModelSpec) -> ResolvedModel:
    """Turn a model spec into a model folder (+ adapter), looking inside train stage folders.

    A ``path`` holding ``adapter/`` (LoRA) is that adapter over the base; one holding ``model/`` (full or
    SPIDER) is that model; one holding ``adapter_config.json`` is itself an adapter.

    Raises:
        FileNotFoundError: a configured folder does not exist.
    """
    served = spec.served_name or spec.name
    if spec.adapter:
        return ResolvedModel(spec.name, spec.arm, base.path, spec.adapter, served)
    if not spec.path:
        return ResolvedModel(spec.name, spec.arm, base.path, None, served)
    p = Path(spec.path)
    if not p.is_dir():
        raise FileNotFoundError(f"model {spec.name!r}: folder {p} does not exist")
    if (p / TRAIN_ADAPTER).is_dir():
        return ResolvedModel(spec.name, spec.arm, base.path, str(p / TRAIN_ADAPTER), served)
    if (p / TRAIN_MODEL).is_dir():
        return ResolvedModel(spec.name, spec.arm, str(p / TRAIN_MODEL), None, served)
    if (p / "adapter_config.json").is_file():
        return ResolvedModel(spec.name, spec.arm, base.path, str(p), served)
    return ResolvedModel(spec.name, spec.arm, str(p), None, served)


# --- answering ---------------------------------------------------------------------------------------


class EngineStudent:
    """A model answered in-process by serve's transformers engine, many prompts per ``generate`` call
    (:meth:`edray.serve.transformers_engine.TransformersEngine.generate_batch`).

    Requests have the layout the served API gives the engine (the images, then the text, in one user
    turn), so in-process and served answers of the same weights are the same.

    Args:
        model: where the weights are (a model folder, optionally a peft adapter over it).
        config: decoding settings (batch size, max tokens, threads).

    Raises:
        EngineError: the folder is missing or holds no safetensors weights, or the adapter folder is
            not a peft adapter.
    """

    def __init__(self, model: ResolvedModel, config: GenerationConfig) -> None:
        from edray.serve.transformers_engine import TransformersEngine

        assert model.path is not None
        self.config = config
        adapters = {model.name: model.adapter} if model.adapter else {}
        base_name = f"{model.name}-base" if model.adapter else model.name
        self.engine = TransformersEngine(base_name, model.path, adapters, torch_threads=config.torch_threads)
        self.model = model.name

    def answer(self, prompts: Sequence[str], images: Sequence[Sequence[bytes]]) -> list[tuple[str | None, str | None]]:
        """Greedy answers, ``(text, None)`` or ``(None, failure)`` per prompt, in order."""
        requests = [
            ChatRequest(
                model=self.model,
                messages=[{"role": "user", "content": IMAGE_PLACEHOLDER * len(imgs) + p}],
                images=list(imgs),
                max_tokens=self.config.max_tokens,
                temperature=0.0,
            )
            for p, imgs in zip(prompts, images)
        ]
        results = run_sync(self.engine.generate_batch(requests, self.config.batch_size))
        return [(r.text, None) if isinstance(r, ChatResult) else (None, f"HTTP {r.status}: {r}"[:500]) for r in results]


def answer_with_client(
    client: Any, served_name: str, prompts: Sequence[str], images: Sequence[Sequence[bytes]], max_tokens: int
) -> list[tuple[str | None, str | None]]:
    """Answers from an OpenAI-compatible endpoint, ``(text, None)`` or ``(None, failure)`` per prompt."""
    from edray.serve.client import Failure
    from edray.serve.core import user_message

    payloads = [
        {"model": served_name, "messages": [user_message(p, list(imgs))], "max_tokens": max_tokens, "temperature": 0.0}
        for p, imgs in zip(prompts, images)
    ]
    if hasattr(client, "chat_many"):
        results = client.chat_many(payloads, progress=False)
    else:  # an in-process engine client offers only the async form
        results = run_sync(client.achat_many(payloads, progress=False))
    out: list[tuple[str | None, str | None]] = []
    for r in results:
        if isinstance(r, Failure):
            status = f", status {r.status}" if r.status is not None else ""
            out.append((None, f"{r.reason} (after {r.attempts} attempts{status})"))
        else:
            out.append((r.text, None))
    return out


# --- the stage ---------------------------------------------------------------------------------------


def predict(
    answers: Sequence[tuple[str | None, str | None]],
    rows: Sequence[dict[str, Any]],
    model: ResolvedModel,
    suite: str,
    config: EvaluateConfig,
) -> list[dict[str, Any]]:
    """Scored prediction rows (``EVAL_PREDICTIONS_SCHEMA``) of one model on one suite."""
    sc = config.scoring
    out = []
    for row, (text, failure) in zip(rows, answers):
        scored = core.score_reply(
            row, text, failure, sc.scorer_by_type, sc.abs_tol, sc.rel_tol, sc.correct_threshold
        )
        out.append(
            {
                "model": model.name,
                "arm": model.arm,
                "suite": suite,
                "id": row["id"],
                "task": str(row["source_task"]),
                "gold": str(row["answer"]),
                "skills": core.row_skills(row, config.skill_source),
                **scored,
            }
        )
    return out


def _answer_all(
    models: Sequence[ResolvedModel],
    suites: dict[str, list[dict[str, Any]]],
    prompts: dict[str, list[str]],
    images: dict[str, list[list[bytes]]],
    config: EvaluateConfig,
    client: Any,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Every model's scored predictions on every suite, and the seconds each model took."""
    predictions: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    for model in models:
        t0 = time.time()
        if config.backend == "transformers":
            answer = EngineStudent(model, config.generation).answer
        else:
            from edray.serve.client import ModelClient

            cl = client or ModelClient(config.client.model_copy(update={"model": model.served_name}))
            answer = lambda p, i, cl=cl, m=model: answer_with_client(cl, m.served_name, p, i, config.generation.max_tokens)  # noqa: E731
        # One pass over both suites: the in-process backend loads the model once per model.
        names = list(suites)
        replies = answer([p for s in names for p in prompts[s]], [i for s in names for i in images[s]])
        offset = 0
        for suite in names:
            rows = suites[suite]
            predictions += predict(replies[offset : offset + len(rows)], rows, model, suite, config)
            offset += len(rows)
        timings[model.name] = round(time.time() - t0, 3)
        log.info("evaluate: %s answered in %.1f s", model.name, timings[model.name])
    return predictions, timings


def _models(config: EvaluateConfig) -> list[Any]:
    specs = ([config.base.model_copy(update={"arm": "base"})] if config.evaluate_base else []) + list(config.models)
    return [resolve_model(s, config.base) for s in specs]


_SUITES: dict[tuple[Any, ...], list[dict[str, Any]]] = {}


def _suite(paths: Sequence[str], limit: int | None, split: str | None) -> list[dict[str, Any]]:
    """:func:`read_suite`, remembered per process and file version: the arms of a grid evaluated one
    after another in one process read each evaluation set once."""
    key = (tuple(version_stamp(p) for p in paths), limit, split)
    if key not in _SUITES:
        if len(_SUITES) > 8:
            _SUITES.clear()
        _SUITES[key] = read_suite(paths, limit, split)
    return _SUITES[key]


def stage(config: EvaluateConfig, run_dir: str | Path, name: str = STAGE) -> Stage:
    """The evaluate stage's identity: ``round_<k>/<name>`` (``evaluate``; the arm runner evaluates each
    arm alone in ``evaluate_arm`` and the base in ``evaluate_base``), keyed by the config, the splits and
    (in process) the model folders it scores."""
    inputs: list[str] = [*config.target, config.general]
    if config.backend == "transformers":
        inputs += sorted({p for m in _models(config) for p in (m.path, m.adapter) if p})
    return Stage(StageDir(Path(run_dir), name, config.round), config, inputs=inputs)


def run(config: EvaluateConfig, run_dir: str | Path, force: bool = False, client: Any = None, name: str = STAGE) -> Path:
    """Run the evaluate stage (skipped when a completed output has the same config and inputs).

    Args:
        config: the validated stage config.
        run_dir: the run directory; output goes to ``round_<k>/evaluate``.
        force: re-run even when a completed output matches.
        client: a client with ``achat_many`` to use instead of one built from ``config.client``
            (serve backend only).
        name: the stage folder's name under ``round_<k>`` (see :func:`stage`).

    Returns:
        The stage folder.

    Raises:
        FileNotFoundError, ValueError: a split or model folder is missing or unusable.
        EngineError: the transformers engine cannot load a model folder (no safetensors weights).
    """
    st = stage(config, run_dir, name)
    models = _models(config)

    def compute(tmp: Path) -> None:
        suites = {
            "target": _suite(config.target, config.limit_target, config.split),
            "general": _suite([config.general], config.limit_general, config.split),
        }
        template = config.generation.templates[config.generation.family]
        prompts = {s: [core.render_prompt(r, template) for r in rows] for s, rows in suites.items()}
        images = {s: [list(r["images"] or []) for r in rows] for s, rows in suites.items()}

        started = time.time()
        predictions, timings = _answer_all(models, suites, prompts, images, config, client)
        st.dir.counts.update({"models": len(models), "target_rows": len(suites["target"]), "general_rows": len(suites["general"])})
        _write_scores(st, tmp, predictions, config, base=config.base.name if config.evaluate_base else None)
        st.dir.metrics.update({"seconds_per_model": timings, "wall_s": round(time.time() - started, 3)})

    return run_stage(st, compute, force=force)


def _write_scores(st: Stage, tmp: Path, predictions: list[dict[str, Any]], config: EvaluateConfig, base: str | None) -> None:
    """Predictions, the accuracy table and (when the base was answered) the per-model summary."""
    scores = core.accuracy_table(predictions)
    pq.write_table(pa.Table.from_pylist(predictions, schema=EVAL_PREDICTIONS_SCHEMA), tmp / EVAL_PREDICTIONS)
    pq.write_table(pa.Table.from_pylist(scores, schema=EVAL_SCORES_SCHEMA), tmp / EVAL_SCORES)
    st.dir.counts.update(
        {"predictions": len(predictions), "failures": sum(p["failure"] is not None for p in predictions)}
    )
    if base is not None:
        st.dir.metrics["summary"] = [s.as_dict() for s in core.summarize(scores, base, config.cap_retention, config.main_task)]


def collect(config: EvaluateConfig, run_dir: str | Path, parts: Sequence[Path], force: bool = False) -> Path:
    """Join the evaluated parts of a round (the base and each arm, each evaluated alone) into the
    round's evaluate stage, as if one evaluate stage had answered with every model.

    Args:
        config: the round's evaluate config, naming the base and every model.
        run_dir: the run folder; output goes to ``round_<k>/evaluate``.
        parts: committed evaluate stage folders whose predictions cover the base and every model.

    Raises:
        ValueError: a model of ``config`` has no predictions in ``parts``, or two parts answer for one model.
    """
    st = Stage(StageDir(Path(run_dir), STAGE, config.round), config, inputs=[Path(p) / EVAL_PREDICTIONS for p in parts],
               extra={"collect": True})

    def compute(tmp: Path) -> None:
        tables = [pq.read_table(Path(p) / EVAL_PREDICTIONS) for p in parts]
        by_model: dict[str, Path] = {}
        for part, table in zip(parts, tables):
            for model in set(table["model"].to_pylist()):
                if model in by_model:
                    raise ValueError(f"model {model!r} is answered in both {by_model[model]} and {part}")
                by_model[model] = Path(part)
        wanted = [config.base.name] + [m.name for m in config.models]
        missing = [m for m in wanted if m not in by_model]
        if missing:
            raise ValueError(f"no predictions for model(s) {missing} in the parts {[str(p) for p in parts]}")
        predictions = pa.concat_tables(tables).to_pylist()
        st.dir.counts.update({"models": len(wanted), "parts": len(parts)})
        _write_scores(st, tmp, predictions, config, base=config.base.name)
        seconds: dict[str, float] = {}
        for part in parts:
            seconds.update(json.loads((Path(part) / MANIFEST).read_text()).get("metrics", {}).get("seconds_per_model", {}))
        st.dir.metrics["seconds_per_model"] = seconds

    return run_stage(st, compute, force=force)
