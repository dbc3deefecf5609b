"""The failure budget: a teacher that answers garbage for 30 % of calls stops diagnose and the index
with an error that gives the share and the reasons; a re-run against a healthy teacher pays only for the
calls that failed (the world teacher in process, behind the same model client as any endpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edray.budget import FailureBudgetExceeded
from edray.serve.client import ModelClient
from edray.serve.config import ClientConfig
from edray.world.config import TeacherConfig, TeacherNoise
from edray.world.teacher import MALFORMED_REPLIES, WorldTeacher
from tests.fixtures.teacher_llm import planted_world, replay_student

pytestmark = pytest.mark.slow


class GarbageCounter:
    """The world teacher, counting the replies it garbled (its noise makes them unreadable)."""

    def __init__(self, teacher: WorldTeacher) -> None:
        self.teacher = teacher
        self.garbage = 0

    def model_ids(self) -> list[str]:
        return self.teacher.model_ids()

    async def generate(self, request):  # noqa: ANN001, ANN201 - the engine contract
        out = await self.teacher.generate(request)
        self.garbage += out.text in MALFORMED_REPLIES
        return out

    async def stream(self, request):  # noqa: ANN001, ANN201
        yield (await self.generate(request)).text


def _teacher(run_dir: Path, malformed: float) -> tuple[ModelClient, GarbageCounter]:
    noise = TeacherNoise(malformed=malformed, per_attempt=False)
    engine = GarbageCounter(WorldTeacher(TeacherConfig(model_id="teacher", noise=noise)))
    config = ClientConfig(model="teacher", max_retries=0, cache_dir=str(run_dir / "cache"))
    return ModelClient(config, engine=engine), engine


def test_garbage_stops_diagnose_and_a_rerun_pays_only_for_the_failed_calls(tmp_path: Path) -> None:
    from edray.diagnose import job
    from edray.diagnose.config import DiagnoseConfig
    from edray.rundir import StageDir

    world = planted_world(tmp_path / "world", ["spot_item", "corner"], 8)
    cfg = DiagnoseConfig.model_validate(
        {"validation": str(world.validation), "student": {"family": "plain"}, "malformed_retries": 0,
         "teacher": {"model": "teacher"}, "skill": {"structured": "text"}}
    )
    run_dir = tmp_path / "run"
    teacher, engine = _teacher(run_dir, 0.3)
    with pytest.raises(FailureBudgetExceeded) as info:
        job.run(cfg, run_dir, student=replay_student(world, run_dir / "cache"), teacher=teacher)
    err = info.value
    assert err.share > cfg.max_failure_share and err.failed <= err.total == len(world.planted)
    message = str(err)
    assert f"{err.failed} of {err.total} errors" in message and "What to change" in message
    assert "no option probabilities" in message or "no skill phrase" in message
    assert not StageDir(run_dir, "diagnose", 0).is_done()
    first_requests, garbage = teacher.stats.requests, engine.garbage
    assert garbage > 0 and first_requests > garbage

    # The same run directory, a healthy teacher: every usable reply comes from the cache.
    healthy, _ = _teacher(run_dir, 0.0)
    student = replay_student(world, run_dir / "cache")
    stage = job.run(cfg, run_dir, student=student, teacher=healthy)
    assert StageDir(run_dir, "diagnose", 0).is_done()
    assert student.stats.requests == 0
    assert healthy.stats.cache_hits == first_requests - garbage

    # What a healthy run costs from scratch: the re-run paid exactly the difference.
    fresh, _ = _teacher(tmp_path / "fresh", 0.0)
    job.run(cfg, tmp_path / "fresh", student=replay_student(world), teacher=fresh)
    paid = healthy.stats.requests
    assert paid == fresh.stats.requests - healthy.stats.cache_hits
    assert paid < first_requests
    assert (stage / "errors.parquet").is_file()


def test_garbage_stops_the_index_annotation_and_a_rerun_annotates_only_the_rest(ray_session, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from edray.index import job
    from edray.index.config import IndexConfig
    from edray.index.store import connect, open_table
    from edray.world.pool import generate_support_rows

    pool = tmp_path / "pool"
    pool.mkdir()
    pq.write_table(generate_support_rows(7, 0, 120), pool / "part-0.parquet")

    def config(malformed: float) -> IndexConfig:
        return IndexConfig.model_validate({
            "pool": str(pool), "progress_bars": False, "read": {"batch_rows": 60},
            "annotate": {"backend": "engine", "engine": "edray.world.teacher:WorldTeacher", "max_retries": 0,
                         "engine_options": {"noise": {"malformed": malformed, "per_attempt": False}},
                         "actors": 1, "num_cpus": 0.25, "batch_size": 60},
            "embed": {"actors": 1, "num_cpus": 0.5, "batch_size": 64},
        })

    run_dir = tmp_path / "run"
    with pytest.raises(FailureBudgetExceeded) as info:
        job.run(config(0.3), run_dir)
    err = info.value
    assert err.total == 120 and 0.1 < err.share < 0.6
    assert "unparseable teacher answer" in str(err)
    table = open_table(connect(str(run_dir / "lancedb")), "support")
    kept = table.count_rows()
    assert kept == 120 - err.failed  # annotated rows were committed before the stage stopped

    job.run(config(0.0), run_dir)
    summary = pq.read_table(run_dir / "index" / "annotation_failures.parquet")
    assert summary.num_rows == 0
    counts = __import__("json").loads((run_dir / "index" / "manifest.json").read_text())["counts"]
    assert counts["already_indexed"] == kept and counts["indexed"] == err.failed
    assert counts["teacher_requests"] <= err.failed
    assert open_table(connect(str(run_dir / "lancedb")), "support").count_rows() == 120
