"""A real LLM as the teacher: vLLM's own OpenAI server serving SmolLM2-135M-Instruct (a weak, text-only
judge) diagnoses the planted mistakes of a replay student and annotates a small pool.

What must hold whatever the model feels like writing: no error fails; the option probabilities are read
at every step prefix (constrained choice or option likelihood, not the first free token); every skill is
a short phrase, never a sentence about the student; the pool is annotated without failures. How well a
135M model locates the erroneous step is reported (printed), not gated.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytest.importorskip("vllm")

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

STUDENT_SENTENCE = re.compile(r"\b(student|he|she|they|answer(ed)?)\b", re.IGNORECASE)
MAX_WORDS = 8
ROWS = 24


def _short_phrase(phrase: str) -> bool:
    return 0 < len(phrase.split()) <= MAX_WORDS and not STUDENT_SENTENCE.search(phrase) and not phrase.endswith((".", "?"))


def test_smollm2_diagnoses_planted_mistakes(vllm_teacher, tmp_path: Path) -> None:
    from edray.diagnose import job
    from edray.diagnose.config import DiagnoseConfig
    from edray.world.pool import true_error_step
    from tests.fixtures.teacher_llm import planted_world, replay_student

    world = planted_world(tmp_path / "world", ["spot_item", "corner"], 10)
    cfg = DiagnoseConfig.model_validate(
        {
            "validation": str(world.validation),
            "student": {"family": "plain"},
            "teacher": {"base_url": vllm_teacher.base_url, "model": vllm_teacher.model, "max_concurrency": 4,
                        "timeout_s": 300, "api_key_env": "EDRAY_TEST_NO_KEY"},
            "teacher_sees_images": False,
            "locate": {"delta": 0.0, "consecutive": 1, "probabilities": "auto"},
            "skill": {"with_images": False, "max_words": MAX_WORDS},
        }
    )
    started = time.perf_counter()
    stage = job.run(cfg, tmp_path / "run", student=replay_student(world))
    wall = time.perf_counter() - started
    errors = pq.read_table(stage / "errors.parquet").to_pylist()
    manifest = json.loads((stage / "manifest.json").read_text())
    assert len(errors) == len(world.planted) > 0

    failed = [e for e in errors if e["failure"]]
    assert not failed, failed[:3]
    read_everywhere = [e for e in errors if e["margins"] is not None and len(e["margins"]) == len(e["steps"]) + 1]
    assert len(read_everywhere) >= 0.95 * len(errors)
    paths = {e["prob_path"] for e in errors}
    assert paths <= {"choice", "likelihood"}, paths  # vLLM offers better than the first free token
    by_rule = sum(e["method"] == "answer_switch" for e in errors) / len(errors)
    for e in errors:
        assert e["skill"] and _short_phrase(e["skill"]), e["skill"]
    hits = sum(e["step"] == true_error_step(world.rows[e["id"]], e["steps"]) for e in errors)
    print(
        f"\nSmolLM2-135M teacher on {len(errors)} planted errors: failed {len(failed)}, probabilities at every "
        f"prefix {len(read_everywhere) / len(errors):.0%} via {sorted(paths)}, located by the rule {by_rule:.0%}, "
        f"located-step accuracy {hits / len(errors):.2f} (random {_random_accuracy(errors):.2f}), "
        f"{manifest['metrics']['teacher_calls']['requests']} teacher requests, wall {wall:.0f} s; "
        f"skills: {sorted({e['skill'] for e in errors})[:8]}"
    )


def _random_accuracy(errors: list[dict]) -> float:
    return sum(1 / len(e["steps"]) for e in errors) / len(errors)


def test_smollm2_annotates_a_pool(vllm_teacher, ray_session, tmp_path: Path) -> None:
    from edray.index import job
    from edray.index.config import IndexConfig
    from edray.world.pool import generate_support_rows

    pool = tmp_path / "pool"
    pool.mkdir()
    pq.write_table(generate_support_rows(3, 0, ROWS), pool / "part-0.parquet")
    cfg = IndexConfig.model_validate(
        {
            "pool": str(pool), "progress_bars": False,
            "annotate": {"backend": "http", "base_url": vllm_teacher.base_url, "model": vllm_teacher.model,
                         "api_key_env": "EDRAY_TEST_NO_KEY", "concurrency": 8, "timeout_s": 300, "max_tokens": 48,
                         "actors": 1, "num_cpus": 0.25, "batch_size": ROWS, "max_words": MAX_WORDS},
            "embed": {"actors": 1, "num_cpus": 0.5, "batch_size": 64},
        }
    )
    started = time.perf_counter()
    stage = job.run(cfg, tmp_path / "run")
    wall = time.perf_counter() - started
    counts = json.loads((stage / "manifest.json").read_text())["counts"]
    assert counts["annotation_failures"] == 0 and counts["indexed"] == ROWS
    skills = _skills(tmp_path / "run")
    assert len(skills) == ROWS
    for row in skills:
        assert 1 <= len(row) <= cfg.annotate.max_skills and all(_short_phrase(s) for s in row), row
    print(f"\nSmolLM2-135M annotated {ROWS} pool rows in {wall:.0f} s; e.g. {skills[:4]}")


def _skills(run_dir: Path) -> list[list[str]]:
    from edray.index.store import connect, open_table

    table = open_table(connect(str(run_dir / "lancedb")), "support")
    return table.to_arrow().column("skills").to_pylist()
