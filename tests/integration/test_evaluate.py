"""The evaluate stage end to end: the tiny world student (base, a LoRA adapter over it, a full-model
folder) on a tiny target test split and general suite, in-process and through the served API."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from edray.evaluate import core
from edray.evaluate.config import EvaluateConfig
from edray.evaluate.job import read_suite, run
from edray.schemas import EVAL_PREDICTIONS, EVAL_PREDICTIONS_SCHEMA, EVAL_SCORES, EVAL_SCORES_SCHEMA, SCORE_ALL
from edray.world.pool import generate_eval_rows

pytestmark = pytest.mark.slow

N_TARGET, N_GENERAL = 6, 6


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("evaluate-splits")
    pq.write_table(generate_eval_rows("spot_item", "test", N_TARGET, seed=7), root / "target.parquet")
    pq.write_table(generate_eval_rows("general", "test", N_GENERAL, seed=7), root / "general.parquet")
    return root / "target.parquet", root / "general.parquet"


def _config(splits, base: dict, models: list[dict], **extra) -> EvaluateConfig:
    target, general = splits
    return EvaluateConfig.model_validate(
        {
            "target": [str(target)],
            "general": str(general),
            "base": base,
            "models": models,
            "generation": {"family": "plain", "max_tokens": 16, "batch_size": 16, "torch_threads": 1},
            **extra,
        }
    )


@pytest.fixture(scope="module")
def inprocess_run(splits, student_dir, lora_adapter_dir, tmp_path_factory):
    full = tmp_path_factory.mktemp("full-copy") / "model"
    shutil.copytree(student_dir, full)
    cfg = _config(
        splits,
        {"name": "base", "path": str(student_dir)},
        [{"name": "lora", "arm": "lora", "adapter": str(lora_adapter_dir)}, {"name": "full", "arm": "full", "path": str(full)}],
    )
    run_dir = tmp_path_factory.mktemp("evaluate-run")
    return cfg, run_dir, run(cfg, run_dir)


def test_outputs_follow_the_schemas_and_counts(inprocess_run, splits):
    cfg, _, out = inprocess_run
    preds = pq.read_table(out / EVAL_PREDICTIONS)
    scores = pq.read_table(out / EVAL_SCORES)
    assert preds.schema.equals(EVAL_PREDICTIONS_SCHEMA) and scores.schema.equals(EVAL_SCORES_SCHEMA)
    assert preds.num_rows == 3 * (N_TARGET + N_GENERAL)
    ids = defaultdict(set)
    for p in preds.to_pylist():
        ids[(p["model"], p["suite"])].add(p["id"])
    target_ids = {r["id"] for r in read_suite([str(splits[0])])}
    general_ids = {r["id"] for r in read_suite([str(splits[1])])}
    for model in ("base", "lora", "full"):
        assert ids[(model, "target")] == target_ids and ids[(model, "general")] == general_ids
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["predictions"] == preds.num_rows and manifest["counts"]["failures"] == 0
    summary = {s["model"]: s for s in manifest["metrics"]["summary"]}
    assert set(summary) == {"base", "lora", "full"} and summary["base"]["arm"] == "base"
    # Retention of every model, recomputed from the stored predictions: general accuracy over the
    # base's, capped at 1, and undefined (None) when the base answers no general row right.
    preds_rows = preds.to_pylist()

    def general_accuracy(model: str) -> float:
        mine = [p["correct"] for p in preds_rows if p["model"] == model and p["suite"] == "general"]
        return sum(mine) / len(mine)

    base_general = general_accuracy("base")
    for model, s in summary.items():
        assert s["general_accuracy"] == pytest.approx(general_accuracy(model))
        expected = None if base_general == 0 else min(1.0, general_accuracy(model) / base_general)
        assert s["retention"] == (None if expected is None else pytest.approx(expected))
    # The full copy has the base's weights: where retention is defined it is exactly 1.
    assert summary["full"]["retention"] == summary["base"]["retention"] == (None if base_general == 0 else 1.0)


def test_scores_are_consistent_with_predictions(inprocess_run, splits):
    cfg, _, out = inprocess_run
    preds = pq.read_table(out / EVAL_PREDICTIONS).to_pylist()
    rows = {r["id"]: r for r in read_suite([str(splits[0]), str(splits[1])])}
    sc = cfg.scoring
    for p in preds:
        # The stored verdict is what the diagnose scorer says about the stored response.
        again = core.score_reply(rows[p["id"]], p["response"], p["failure"], sc.scorer_by_type, sc.abs_tol, sc.rel_tol, sc.correct_threshold)
        assert again["correct"] == p["correct"] and again["prediction"] == p["prediction"]
        assert p["skills"] == core.row_skills(rows[p["id"]]) and p["skills"]
    by_key = {(s["model"], s["suite"], s["task"], s["skill"]): s for s in pq.read_table(out / EVAL_SCORES).to_pylist()}
    for model in ("base", "lora", "full"):
        for suite in ("target", "general"):
            mine = [p for p in preds if p["model"] == model and p["suite"] == suite]
            overall = by_key[(model, suite, SCORE_ALL, SCORE_ALL)]
            assert overall["n"] == len(mine)
            assert overall["accuracy"] == pytest.approx(sum(p["correct"] for p in mine) / len(mine))
            for skill in {s for p in mine for s in p["skills"]}:
                having = [p for p in mine if skill in p["skills"]]
                row = by_key[(model, suite, SCORE_ALL, skill)]
                assert row["n"] == len(having)
                assert row["accuracy"] == pytest.approx(sum(p["correct"] for p in having) / len(having))


def test_same_weights_give_same_answers_and_adapter_changes_them(inprocess_run):
    _, _, out = inprocess_run
    preds = pq.read_table(out / EVAL_PREDICTIONS).to_pylist()
    resp = {(p["model"], p["suite"], p["id"]): p["response"] for p in preds}
    keys = [(s, i) for (m, s, i) in resp if m == "base"]
    assert all(resp[("full", s, i)] == resp[("base", s, i)] for s, i in keys)
    # The adapter has random non-zero B matrices: it must change at least one greedy answer.
    assert any(resp[("lora", s, i)] != resp[("base", s, i)] for s, i in keys)


def test_rerun_is_a_noop(inprocess_run):
    cfg, run_dir, out = inprocess_run
    before = json.loads((out / "manifest.json").read_text())
    assert run(cfg, run_dir) == out
    after = json.loads((out / "manifest.json").read_text())
    assert after["finished_at"] == before["finished_at"] and after["fingerprint"] == before["fingerprint"]


def test_served_models_answer_like_in_process(inprocess_run, splits, served_app, tmp_path):
    from tests.fixtures.serve import SERVE_API_KEY_ENV

    cfg = _config(
        splits,
        {"name": "base", "served_name": "student"},
        [{"name": "lora", "arm": "lora", "served_name": "student-tuned"}],
        backend="serve",
        client={"base_url": served_app.base_url, "model": "student", "api_key_env": SERVE_API_KEY_ENV, "max_concurrency": 4},
    )
    out = run(cfg, tmp_path)
    served = {(p["model"], p["suite"], p["id"]): p for p in pq.read_table(out / EVAL_PREDICTIONS).to_pylist()}
    local = {(p["model"], p["suite"], p["id"]): p for p in pq.read_table(inprocess_run[2] / EVAL_PREDICTIONS).to_pylist() if p["model"] != "full"}
    assert set(served) == set(local)
    assert all(p["failure"] is None for p in served.values())
    # Same weights, same engine, same request layout, greedy: the served replies (one request at a time)
    # are the in-process ones (batched) exactly.
    differ = [k for k in local if served[k]["response"] != local[k]["response"]]
    assert not differ, f"{len(differ)} of {len(local)} replies differ, e.g. {differ[:3]}"
