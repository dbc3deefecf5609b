"""The diagnose stage end to end: the world student and the world teacher behind the Serve application
(HTTP, the model client's retries and response cache), and in process with a faulty teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from edray.schemas import ANSWERS, ANSWERS_SCHEMA, ERRORS, ERRORS_SCHEMA, GAPS, GAPS_SCHEMA

pytestmark = pytest.mark.slow

METHODS = {"answer_switch", "fallback_largest_increase", "fallback_last_step", "fallback_first_step", "no_steps", "failed"}


def _outputs(stage: Path) -> tuple[list[dict], list[dict], list[dict], dict]:
    tables = {}
    for name, schema in ((ANSWERS, ANSWERS_SCHEMA), (ERRORS, ERRORS_SCHEMA), (GAPS, GAPS_SCHEMA)):
        t = pq.read_table(stage / name)
        assert t.schema.equals(schema), name
        tables[name] = t.to_pylist()
    return tables[ANSWERS], tables[ERRORS], tables[GAPS], json.loads((stage / "manifest.json").read_text())


def _check(answers: list[dict], errors: list[dict], gaps: list[dict], n_rows: int) -> None:
    assert len(answers) == n_rows
    wrong = {a["id"] for a in answers if not a["correct"] and a["failure"] is None}
    assert {e["id"] for e in errors} == wrong
    for e in errors:
        assert e["method"] in METHODS
        if e["step"] is not None:
            assert 1 <= e["step"] <= len(e["steps"]) and e["step_text"] == e["steps"][e["step"] - 1]
        if e["method"] == "failed":
            assert e["failure"]
    named = [e for e in errors if e["skill"]]
    assert sum(g["error_count"] for g in gaps) == len(named)
    assert {eid for g in gaps for eid in g["error_ids"]} == {e["error_id"] for e in named}


def test_diagnose_over_http_with_cache_and_skip(served_app, pipeline_world, tmp_path: Path) -> None:
    from edray.diagnose import job
    from edray.diagnose.config import DiagnoseConfig
    from tests.fixtures.serve import SERVE_API_KEY_ENV

    assert "teacher" in served_app.names, "the served application must serve the world teacher"
    client = {"base_url": served_app.base_url, "api_key_env": SERVE_API_KEY_ENV}
    cfg = DiagnoseConfig.model_validate(
        {
            "validation": str(pipeline_world.validation),
            "student": {"family": "plain", "max_tokens": 24, "client": {**client, "model": "student"}},
            "teacher": {**client, "model": "teacher"},
        }
    )
    stage = job.run(cfg, tmp_path)
    answers, errors, gaps, manifest = _outputs(stage)
    _check(answers, errors, gaps, manifest["counts"]["answers"])
    assert manifest["metrics"]["student_calls"]["requests"] >= len(answers)
    assert errors and all(e["failure"] is None for e in errors)

    # Unchanged re-run: the stage is skipped (same manifest), no model call.
    assert job.run(cfg, tmp_path) == stage
    assert json.loads((stage / "manifest.json").read_text())["finished_at"] == manifest["finished_at"]
    # Forced re-run: every reply comes from the response cache, so no request reaches a model.
    job.run(cfg, tmp_path, force=True)
    forced = json.loads((stage / "manifest.json").read_text())["metrics"]
    assert forced["student_calls"]["requests"] == 0 and forced["teacher_calls"]["requests"] == 0
    assert forced["student_calls"]["cache_hits"] == len(answers)
    again = _outputs(stage)
    assert sorted(map(str, again[1]), key=str) == sorted(map(str, errors), key=str)


def test_diagnose_survives_a_faulty_teacher(pipeline_world, student_dir: Path, tmp_path: Path) -> None:
    from edray.diagnose import job
    from edray.diagnose.config import DiagnoseConfig
    from edray.diagnose.inprocess import EngineClient
    from edray.serve.transformers_engine import TransformersEngine
    from edray.world.config import TeacherConfig, TeacherNoise
    from edray.world.teacher import WorldTeacher

    # A teacher failing this often would stop the stage (the failure budget): accept every failure here.
    # Half of the calls fail, so a quarter still fail after the one retry and some errors record one.
    cfg = DiagnoseConfig.model_validate(
        {"validation": str(pipeline_world.validation), "student": {"family": "plain", "max_tokens": 24},
         "max_failure_share": 1.0}
    )
    student = EngineClient(TransformersEngine("student", str(student_dir), torch_threads=1), "student")
    noisy = WorldTeacher(TeacherConfig(model_id="teacher", noise=TeacherNoise(failed=0.5, malformed=0.2)))
    teacher = EngineClient(noisy, "teacher", max_retries=1)
    stage = job.run(cfg, tmp_path, student=student, teacher=teacher)
    answers, errors, gaps, manifest = _outputs(stage)
    _check(answers, errors, gaps, len(answers))
    # Every request that still failed after the retry is recorded against its error, with its reason.
    recorded = sum((e["failure"] or "").count("HTTP 503") for e in errors)
    assert recorded == teacher.stats.failures > 0
    assert manifest["counts"]["errors_with_failures"] == sum(e["failure"] is not None for e in errors)


def test_a_student_that_never_answers_fails_the_stage_loudly(pipeline_world, tmp_path: Path) -> None:
    import socket

    from edray.diagnose import job
    from edray.diagnose.config import DiagnoseConfig
    from edray.rundir import StageDir

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = {"base_url": f"http://127.0.0.1:{port}/v1", "max_retries": 0, "timeout_s": 2.0}
    cfg = DiagnoseConfig.model_validate(
        {
            "validation": str(pipeline_world.validation),
            "limit": 3,
            "student": {"client": {**client, "model": "student"}},
            "teacher": {**client, "model": "teacher"},
        }
    )
    with pytest.raises(RuntimeError, match="every student call failed"):
        job.run(cfg, tmp_path)
    assert not StageDir(tmp_path, "diagnose", 0).is_done()
