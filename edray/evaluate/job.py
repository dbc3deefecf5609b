"""The evaluate stage: target gain and general retention of every model, side by side (docs/method.md §2, §3).

Inputs:
    - the target task's test split(s) and the general suite (Parquet, ``EVAL_SCHEMA``);
    - the base student and each tuned student or baseline arm: with ``backend: transformers`` model
      folders loaded in-process (a full model folder, a peft adapter over the base, or a train stage
      folder holding ``adapter/`` or ``model/``); with ``backend: serve`` model names on an
      OpenAI-compatible endpoint reached through :class:`edray.serve.client.ModelClient`.
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

import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from edray.aio import run_sync
from edray.evaluate import core
from edray.evaluate.config import EvaluateConfig, ModelSpec
from edray.data.readers import EVAL_REQUIRED_COLUMNS as REQUIRED_COLUMNS
from edray.data.readers import read_parquet_rows
from edray.rundir import Stage, StageDir, run_stage
from edray.schemas import (
    EVAL_PREDICTIONS,
    EVAL_PREDICTIONS_SCHEMA,
    EVAL_SCORES,
    EVAL_SCORES_SCHEMA,
    IMAGE_PLACEHOLDER,
    TRAIN_ADAPTER,
    TRAIN_MODEL,
)

log = logging.getLogger(__name__)

STAGE = "evaluate"


# --- reading -----------------------------------------------------------------------------------------


def read_suite(paths: Sequence[str], limit: int | None = None, split: str | None = None) -> list[dict[str, Any]]:
    """Evaluation rows from one or more Parquet files or folders, in a stable order (by id).

    Args:
        paths: Parquet files or folders in ``EVAL_SCHEMA``.
        limit: keep the first N rows (by id).
        split: keep only rows of this split (``None``: all).

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a required column is missing, an id repeats, or no row is left.
    """
    rows: list[dict[str, Any]] = []
    for path in paths:
        found = read_parquet_rows(path, REQUIRED_COLUMNS, "evaluation split (EVAL_SCHEMA)")
        rows.extend(r for r in found if split is None or r.get("split") == split)
    seen: set[str] = set()
    for r in rows:
        r["id"] = str(r["id"])
        if r["id"] in seen:
            raise ValueError(f"evaluation split(s) {list(paths)}: id {r['id']!r} appears more than once")
        seen.add(r["id"])
    rows.sort(key=lambda r: r["id"])
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise ValueError(f"evaluation split(s) {list(paths)}: no rows" + (f" of split {split!r}" if split else ""))
    return rows


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


class TransformersStudent:
    """A model answered in-process by the world student's batched greedy generation
    (:func:`edray.world.student_eval.evaluate_student`).

    A LoRA adapter is merged into a copy of its base model in a temporary folder first, since that
    generation loads a model folder.

    Args:
        model: where the weights are (a model folder, optionally a peft adapter over it).
        config: decoding settings (batch size, max tokens, threads).
        scratch: folder for the merged copy of an adapter model (removed by the caller).

    Raises:
        FileNotFoundError: the folder holds no safetensors weights.
    """

    def __init__(self, model: ResolvedModel, config: Any, scratch: Path) -> None:
        assert model.path is not None
        if not any(Path(model.path).glob("*.safetensors")):
            raise FileNotFoundError(f"model {model.name!r}: {model.path} holds no .safetensors weights")
        self.config = config
        self.folder = merge_adapter(model.path, model.adapter, scratch / model.name) if model.adapter else Path(model.path)

    def _generate(self, prompts: Sequence[str], images: Sequence[Sequence[bytes]]) -> list[str]:
        from edray.world.student_eval import evaluate_student

        rows = [
            # The layout the serve client sends (images first, then the text), as one content string.
            {"id": str(i), "images": list(imgs), "messages": [{"role": "user", "content": "\n".join([IMAGE_PLACEHOLDER] * len(imgs) + [p])}],
             "answer": "", "answer_type": "open", "choices": None}
            for i, (p, imgs) in enumerate(zip(prompts, images))
        ]  # fmt: skip
        report = evaluate_student(
            self.folder, rows, batch_size=self.config.batch_size, max_new_tokens=self.config.max_tokens,
            torch_threads=self.config.torch_threads or None,
        )  # fmt: skip
        by_id = {p["id"]: p["reply"] for p in report.predictions}
        return [by_id[str(i)] for i in range(len(rows))]

    def answer(self, prompts: Sequence[str], images: Sequence[Sequence[bytes]]) -> list[tuple[str | None, str | None]]:
        """Greedy answers, ``(text, None)`` or ``(None, failure)`` per prompt, in order.

        When the batched pass fails (an unreadable image, a prompt too long), rows are answered one by
        one so that a bad row fails alone and the others still count.
        """
        try:
            return [(t, None) for t in self._generate(prompts, images)]
        except Exception as exc:  # noqa: BLE001 - isolate the failing rows below
            log.warning("evaluate: batched answering failed (%s); answering row by row", exc)
        out: list[tuple[str | None, str | None]] = []
        for p, imgs in zip(prompts, images):
            try:
                out.append((self._generate([p], [imgs])[0], None))
            except Exception as exc:  # noqa: BLE001 - recorded as the row's failure
                out.append((None, f"{type(exc).__name__}: {exc}"[:500]))
        return out


def merge_adapter(base: str, adapter: str, out: Path) -> Path:
    """Merge a peft LoRA adapter into its base model and save the result (with the base's processor).

    Returns:
        ``out``, a model folder transformers loads.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    net = AutoModelForImageTextToText.from_pretrained(base, use_safetensors=True, trust_remote_code=False, dtype=torch.float32)
    merged = PeftModel.from_pretrained(net, adapter).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    AutoProcessor.from_pretrained(base, trust_remote_code=False).save_pretrained(out)
    return out


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
    scratch: Path,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Every model's scored predictions on every suite, and the seconds each model took."""
    predictions: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    for model in models:
        t0 = time.time()
        if config.backend == "transformers":
            answer = TransformersStudent(model, config.generation, scratch).answer
        else:
            from edray.serve.client import ModelClient

            cl = client or ModelClient(config.client.model_copy(update={"model": model.served_name}))
            answer = lambda p, i, cl=cl, m=model: answer_with_client(cl, m.served_name, p, i, config.generation.max_tokens)  # noqa: E731
        # One pass over both suites: the in-process backend loads the model once per call.
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
    specs = [config.base.model_copy(update={"arm": "base"}), *config.models]
    return [resolve_model(s, config.base) for s in specs]


def stage(config: EvaluateConfig, run_dir: str | Path) -> Stage:
    """The evaluate stage's identity: ``round_<k>/evaluate``, keyed by the config, the splits and (in
    process) the model folders it scores."""
    inputs: list[str] = [*config.target, config.general]
    if config.backend == "transformers":
        inputs += sorted({p for m in _models(config) for p in (m.path, m.adapter) if p})
    return Stage(StageDir(Path(run_dir), STAGE, config.round), config, inputs=inputs)


def run(config: EvaluateConfig, run_dir: str | Path, force: bool = False, client: Any = None) -> Path:
    """Run the evaluate stage (skipped when a completed output has the same config and inputs).

    Args:
        config: the validated stage config.
        run_dir: the run directory; output goes to ``round_<k>/evaluate``.
        force: re-run even when a completed output matches.
        client: a client with ``achat_many`` to use instead of one built from ``config.client``
            (serve backend only).

    Returns:
        The stage folder.

    Raises:
        FileNotFoundError, ValueError: a split or model folder is missing or unusable.
    """
    st = stage(config, run_dir)
    models = _models(config)

    def compute(tmp: Path) -> None:
        suites = {
            "target": read_suite(config.target, config.limit_target, config.split),
            "general": read_suite([config.general], config.limit_general, config.split),
        }
        template = config.generation.templates[config.generation.family]
        prompts = {s: [core.render_prompt(r, template) for r in rows] for s, rows in suites.items()}
        images = {s: [list(r["images"] or []) for r in rows] for s, rows in suites.items()}

        started = time.time()
        predictions: list[dict[str, Any]] = []
        timings: dict[str, float] = {}
        scratch = Path(tempfile.mkdtemp(prefix="edray-evaluate-"))
        try:
            predictions, timings = _answer_all(models, suites, prompts, images, config, client, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        scores = core.accuracy_table(predictions)
        summary = core.summarize(scores, models[0].name, config.cap_retention)
        pq.write_table(pa.Table.from_pylist(predictions, schema=EVAL_PREDICTIONS_SCHEMA), tmp / EVAL_PREDICTIONS)
        pq.write_table(pa.Table.from_pylist(scores, schema=EVAL_SCORES_SCHEMA), tmp / EVAL_SCORES)
        st.dir.counts.update(
            {
                "models": len(models),
                "target_rows": len(suites["target"]),
                "general_rows": len(suites["general"]),
                "predictions": len(predictions),
                "failures": sum(p["failure"] is not None for p in predictions),
            }
        )
        st.dir.metrics.update(
            {
                "summary": [s.as_dict() for s in summary],
                "seconds_per_model": timings,
                "wall_s": round(time.time() - started, 3),
            }
        )

    return run_stage(st, compute, force=force)
