"""The evaluate stage: target gain and general retention of every model, side by side (METHOD.md §2, §3).

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

import asyncio
import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from edray.evaluate import core
from edray.evaluate.config import EvaluateConfig, ModelSpec
from edray.rundir import StageDir, fingerprint
from edray.schemas import (
    EVAL_PREDICTIONS,
    EVAL_PREDICTIONS_SCHEMA,
    EVAL_SCORES,
    EVAL_SCORES_SCHEMA,
    TRAIN_ADAPTER,
    TRAIN_MODEL,
)

log = logging.getLogger(__name__)

STAGE = "evaluate"
REQUIRED_COLUMNS = ("id", "source_task", "images", "messages", "answer", "answer_type")


# --- reading -----------------------------------------------------------------------------------------


def read_suite(paths: Sequence[str], limit: int | None = None) -> list[dict[str, Any]]:
    """Evaluation rows from one or more Parquet files or folders, in a stable order (by id).

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a required column is missing, an id repeats, or no row is left.
    """
    rows: list[dict[str, Any]] = []
    for path in paths:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"evaluation split {p} does not exist")
        table = pq.read_table(p)
        missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(f"evaluation split {p}: missing column(s) {missing}; expected EVAL_SCHEMA")
        rows.extend(table.to_pylist())
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
        raise ValueError(f"evaluation split(s) {list(paths)}: no rows")
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
    """A model loaded in-process that answers prompts in batches, greedily.

    Args:
        model: where the weights are (a model folder, optionally a peft adapter over it).
        config: decoding settings (batch size, dtype, threads, trust_remote_code).

    Raises:
        FileNotFoundError: the folder holds no safetensors weights.
    """

    def __init__(self, model: ResolvedModel, config: Any) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        assert model.path is not None
        if not any(Path(model.path).glob("*.safetensors")):
            raise FileNotFoundError(f"model {model.name!r}: {model.path} holds no .safetensors weights")
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        self.config = config
        self.processor = AutoProcessor.from_pretrained(model.path, trust_remote_code=config.trust_remote_code)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        # Batched generation of a decoder-only model needs the prompts aligned on the right.
        self.tokenizer.padding_side = "left"
        net = AutoModelForImageTextToText.from_pretrained(
            model.path,
            use_safetensors=True,
            trust_remote_code=config.trust_remote_code,
            dtype=getattr(torch, config.dtype),
        )
        if model.adapter:
            from peft import PeftModel

            net = PeftModel.from_pretrained(net, model.adapter)
        self.model = net.eval()
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            self.eos.add(self.tokenizer.eos_token_id)

    def _encode(self, prompts: Sequence[str], images: Sequence[Sequence[bytes]]) -> dict[str, Any]:
        from PIL import Image

        texts, pics = [], []
        for prompt, imgs in zip(prompts, images):
            # The same message layout the serve client sends: the images first, then the text.
            content = [{"type": "image"} for _ in imgs] + [{"type": "text", "text": prompt}]
            texts.append(
                self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)
            )
            pics.extend(Image.open(io.BytesIO(b)).convert("RGB") for b in imgs)
        kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True}
        if pics:
            kwargs["images"] = pics
        return dict(self.processor(**kwargs))

    def _generate(self, prompts: Sequence[str], images: Sequence[Sequence[bytes]]) -> list[str]:
        import torch

        inputs = self._encode(prompts, images)
        n_prompt = int(inputs["input_ids"].shape[1])
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=self.config.max_tokens,
                do_sample=False,
                temperature=None,
                top_k=None,
                top_p=None,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        texts = []
        for seq in out[:, n_prompt:].tolist():
            cut = next((i for i, t in enumerate(seq) if t in self.eos), len(seq))
            texts.append(self.tokenizer.decode(seq[:cut], skip_special_tokens=True))
        return texts

    def answer(self, prompts: Sequence[str], images: Sequence[Sequence[bytes]]) -> list[tuple[str | None, str | None]]:
        """Greedy answers, ``(text, None)`` or ``(None, failure)`` per prompt, in order.

        Batches hold rows with the same number of images; a batch that fails is retried row by row so
        that one bad row (an unreadable image, a prompt too long) fails alone.
        """
        out: list[tuple[str | None, str | None]] = [(None, "not answered")] * len(prompts)
        groups: dict[int, list[int]] = {}
        for i, imgs in enumerate(images):
            groups.setdefault(len(imgs), []).append(i)
        bs = self.config.batch_size
        for idx in groups.values():
            for start in range(0, len(idx), bs):
                chunk = idx[start : start + bs]
                try:
                    texts = self._generate([prompts[i] for i in chunk], [images[i] for i in chunk])
                    for i, t in zip(chunk, texts):
                        out[i] = (t, None)
                except Exception as exc:  # noqa: BLE001 - isolate the failing row below
                    log.warning("evaluate: batch of %d failed (%s); answering row by row", len(chunk), exc)
                    for i in chunk:
                        try:
                            out[i] = (self._generate([prompts[i]], [images[i]])[0], None)
                        except Exception as one_exc:  # noqa: BLE001 - recorded as the row's failure
                            out[i] = (None, f"{type(one_exc).__name__}: {one_exc}"[:500])
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
    results = asyncio.run(client.achat_many(payloads, progress=False))
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
    run_dir = Path(run_dir)
    stage = StageDir(run_dir, STAGE, config.round)
    specs = [config.base.model_copy(update={"arm": "base"})]
    specs += list(config.models)
    models = [resolve_model(s, config.base) for s in specs]
    inputs: list[str] = [*config.target, config.general]
    if config.backend == "transformers":
        inputs += sorted({p for m in models for p in (m.path, m.adapter) if p})
    fp = fingerprint(config, inputs=inputs)
    if stage.is_done(fp) and not force:
        log.info("evaluate: %s is up to date (fingerprint %s); skipping", stage.path, fp)
        return stage.path
    stage.clean_stale()
    suites = {
        "target": read_suite(config.target, config.limit_target),
        "general": read_suite([config.general], config.limit_general),
    }
    template = config.generation.templates[config.generation.family]
    prompts = {s: [core.render_prompt(r, template) for r in rows] for s, rows in suites.items()}
    images = {s: [list(r["images"] or []) for r in rows] for s, rows in suites.items()}

    started = time.time()
    predictions: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    for model in models:
        t0 = time.time()
        if config.backend == "transformers":
            student = TransformersStudent(model, config.generation)
            answer = student.answer
        else:
            from edray.serve.client import ModelClient

            cl = client or ModelClient(config.client.model_copy(update={"model": model.served_name}))
            answer = lambda p, i, cl=cl, m=model: answer_with_client(cl, m.served_name, p, i, config.generation.max_tokens)  # noqa: E731
        for suite, rows in suites.items():
            predictions += predict(answer(prompts[suite], images[suite]), rows, model, suite, config)
        timings[model.name] = round(time.time() - t0, 3)
        log.info("evaluate: %s answered in %.1f s", model.name, timings[model.name])
        if config.backend == "transformers":
            del student

    scores = core.accuracy_table(predictions)
    summary = core.summarize(scores, models[0].name, config.cap_retention)
    with stage.commit(config, fp, inputs=inputs) as tmp:
        pq.write_table(pa.Table.from_pylist(predictions, schema=EVAL_PREDICTIONS_SCHEMA), tmp / EVAL_PREDICTIONS)
        pq.write_table(pa.Table.from_pylist(scores, schema=EVAL_SCORES_SCHEMA), tmp / EVAL_SCORES)
        stage.counts.update(
            {
                "models": len(models),
                "target_rows": len(suites["target"]),
                "general_rows": len(suites["general"]),
                "predictions": len(predictions),
                "failures": sum(p["failure"] is not None for p in predictions),
            }
        )
        stage.metrics.update(
            {
                "summary": [s.as_dict() for s in summary],
                "seconds_per_model": timings,
                "wall_s": round(time.time() - started, 3),
            }
        )
    return stage.path
