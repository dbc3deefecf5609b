"""Every Arrow schema and artifact name edray reads or writes, in one place.

A *supporting sample* is one row of the task-agnostic pool; an *evaluation sample* is one row of a
target task (validation or test split) or of the general suite. Readers normalize every input format
to these schemas; rows that cannot be normalized go to the quarantine table with a reason.

Conventions:
- ``id`` is stable across runs: taken from the source when present, otherwise derived from content
  (:func:`edray.data.core.content_id`).
- ``images`` holds encoded image files (PNG/JPEG/... bytes), in the order their ``<image>``
  placeholders appear in ``messages``.
- ``messages`` are chat turns; ``content`` is text in which each image is the placeholder ``<image>``.
- ``metadata`` is a JSON object serialized as a string: free-form, source-specific. The skills world
  keeps its ground truth under the key ``"world"``; pipeline stages never read it (only the world
  teacher and the evaluator do).
"""

from __future__ import annotations

import pyarrow as pa

IMAGE_PLACEHOLDER = "<image>"

# --- limits applied by the readers (overridable in their config) --------------------------------
MAX_IMAGE_BYTES = 8 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_TEXT_CHARS = 64 * 1024
MAX_TURNS = 64

MESSAGE_TYPE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])

SUPPORT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source_task", pa.string(), nullable=False),
        pa.field("images", pa.list_(pa.binary()), nullable=False),
        pa.field("messages", pa.list_(MESSAGE_TYPE), nullable=False),
        pa.field("skills", pa.list_(pa.string()), nullable=True),
        pa.field("metadata", pa.string(), nullable=True),
    ]
)

ANSWER_TYPES = ("multiple_choice", "yes_no", "number", "open")

EVAL_SCHEMA = pa.schema(
    list(SUPPORT_SCHEMA)
    + [
        pa.field("answer", pa.string(), nullable=False),
        pa.field("choices", pa.list_(pa.string()), nullable=True),
        pa.field("answer_type", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("record_id", pa.string(), nullable=True),
        pa.field("source", pa.string(), nullable=False),
        pa.field("position", pa.int64(), nullable=True),
        pa.field("field", pa.string(), nullable=True),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("raw", pa.string(), nullable=True),
    ]
)

# --- artifact names (files and folders inside a stage folder) -----------------------------------
QUARANTINE = "quarantine.parquet"
SUMMARY = "summary.json"

# --- diagnose ---
# answers.parquet: the student's step-by-step rollout over the validation set, scored.
ANSWERS = "answers.parquet"
ANSWERS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source_task", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("gold", pa.string(), nullable=False),
        pa.field("answer_type", pa.string(), nullable=False),
        pa.field("choices", pa.list_(pa.string()), nullable=True),
        pa.field("model", pa.string(), nullable=False),
        pa.field("response", pa.string(), nullable=True),
        pa.field("steps", pa.list_(pa.string()), nullable=False),
        pa.field("prediction", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("failure", pa.string(), nullable=True),
    ]
)
# errors.parquet: one row per wrong answer: located step, how it was located, the missing skill.
ERRORS = "errors.parquet"
ERRORS_SCHEMA = pa.schema(
    [
        pa.field("error_id", pa.string(), nullable=False),
        pa.field("id", pa.string(), nullable=False),
        pa.field("round", pa.int32(), nullable=False),
        pa.field("source_task", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("gold", pa.string(), nullable=False),
        pa.field("prediction", pa.string(), nullable=False),
        pa.field("answer_type", pa.string(), nullable=False),
        pa.field("options", pa.list_(pa.string()), nullable=True),
        pa.field("steps", pa.list_(pa.string()), nullable=False),
        pa.field("step", pa.int32(), nullable=True),
        pa.field("step_text", pa.string(), nullable=True),
        pa.field("method", pa.string(), nullable=False),
        pa.field("margins", pa.list_(pa.float64()), nullable=True),
        # How the option probabilities were read: choice, likelihood or top_logprobs (None: not read).
        pa.field("prob_path", pa.string(), nullable=True),
        pa.field("skill", pa.string(), nullable=True),
        pa.field("gap_id", pa.int32(), nullable=True),
        pa.field("teacher_raw", pa.string(), nullable=True),
        pa.field("failure", pa.string(), nullable=True),
    ]
)
# gaps.parquet: missing-skill phrases clustered into capability gaps.
GAPS = "gaps.parquet"
GAPS_SCHEMA = pa.schema(
    [
        pa.field("gap_id", pa.int32(), nullable=False),
        pa.field("skill", pa.string(), nullable=False),
        pa.field("phrases", pa.list_(pa.string()), nullable=False),
        pa.field("error_count", pa.int64(), nullable=False),
        pa.field("error_ids", pa.list_(pa.string()), nullable=False),
        pa.field("example_steps", pa.list_(pa.string()), nullable=False),
    ]
)

# --- select ---
# selection.parquet: the training set the train stage reads, one row per sample, with provenance.
# source = "pool" (a row of the supporting pool, by id) or "validation" (the validation-set baseline).
SELECTION = "selection.parquet"
SELECTION_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("strategy", pa.string(), nullable=False),
        pa.field("round", pa.int32(), nullable=False),
        pa.field("gap_id", pa.int32(), nullable=True),
        pa.field("skill", pa.string(), nullable=True),
        pa.field("error_ids", pa.list_(pa.string()), nullable=False),
        pa.field("query", pa.string(), nullable=True),
        pa.field("retrieval_mode", pa.string(), nullable=True),
        pa.field("score", pa.float64(), nullable=True),
        pa.field("rank", pa.int32(), nullable=True),
    ]
)

# --- train ---
# Inside runs/<run>/round_<k>/train/: the trained weights as a folder transformers loads unchanged
# (adapter/ for LoRA via peft, model/ for full and SPIDER), each with the processor, and one metrics
# row per optimizer step.
TRAIN_ADAPTER = "adapter"
TRAIN_MODEL = "model"
TRAIN_METRICS = "metrics.parquet"

# --- world ---
# Inside a generated skills world (edray world generate --out DIR): the supporting pool as Parquet
# files (SUPPORT_SCHEMA) and optionally as a Lance dataset, one folder per evaluation suite holding
# validation.parquet and test.parquet (EVAL_SCHEMA), and world.json (skills, tasks, pool skill shares).
WORLD_POOL_DIR = "pool"
WORLD_POOL_LANCE = "pool.lance"
WORLD_EVAL_DIR = "eval"
WORLD_INFO = "world.json"
WORLD_GENERAL_SUITE = "general"

# --- evaluate ---
# Inside runs/<run>/round_<k>/evaluate/: one prediction per (model, suite, sample) and the accuracy
# tables. suite = "target" (the target task's test split) or "general" (the retention suite). In
# scores.parquet, task and skill hold SCORE_ALL ("*") on rows aggregated over every task or skill.
EVAL_PREDICTIONS = "predictions.parquet"
EVAL_PREDICTIONS_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("arm", pa.string(), nullable=False),
        pa.field("suite", pa.string(), nullable=False),
        pa.field("id", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("response", pa.string(), nullable=True),
        pa.field("prediction", pa.string(), nullable=False),
        pa.field("gold", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("skills", pa.list_(pa.string()), nullable=False),
        pa.field("failure", pa.string(), nullable=True),
    ]
)
EVAL_SCORES = "scores.parquet"
EVAL_SCORES_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("arm", pa.string(), nullable=False),
        pa.field("suite", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("skill", pa.string(), nullable=False),
        pa.field("n", pa.int64(), nullable=False),
        pa.field("accuracy", pa.float64(), nullable=False),
        pa.field("stderr", pa.float64(), nullable=False),
    ]
)
SCORE_ALL = "*"
EVAL_SUITES = ("target", "general")

# --- report ---
REPORT_HTML = "report.html"

# A run folder (`edray run`): the validated run config, written when the run starts.
RUN_CONFIG = "run_config.json"

# --- index ---
# Inside the index stage folder (runs/<run>/index): the quarantine (QUARANTINE), the rows whose skill
# annotation failed, the run summary (SUMMARY) and where the LanceDB table is and how to query it. The
# LanceDB database itself defaults to runs/<run>/lancedb, outside the stage folder, because it grows
# across runs (incremental indexing).
INDEX_INFO = "index_info.json"
INDEX_ANNOTATION_FAILURES = "annotation_failures.parquet"
INDEX_DB_DIR = "lancedb"
INDEX_ANNOTATION_FAILURE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("position", pa.int64()),
        pa.field("annotation_key", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
    ]
)
# The persistent annotation cache table, keyed by the content hash of instruction + answer + teacher
# model + prompt version.
INDEX_ANNOTATION_CACHE_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("skills", pa.list_(pa.string())),
        pa.field("model", pa.string()),
        pa.field("prompt_version", pa.string()),
    ]
)
