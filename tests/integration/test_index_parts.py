"""The index stage's building blocks on real components, without Ray: the annotator with the world
teacher, the embedder with MiniLM, the single writer with LanceDB."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from edray.index import core
from edray.index.config import AnnotateConfig, EmbedConfig, IndexConfig
from edray.index.annotate import SkillAnnotator
from edray.index.job import EmbedPredictor, _Writer
from edray.index.store import committed_ids, connect, lookup_cache, open_table
from edray.schemas import QUARANTINE_SCHEMA
from edray.world.pool import generate_support_rows, true_skills
from edray.world.skills import skill_of_phrase


# The skills world's teacher, in process, chosen explicitly (the default teacher is an HTTP endpoint).
WORLD = {"backend": "engine", "engine": "edray.world.teacher:WorldTeacher"}


def _stream(start: int, count: int, known: frozenset[str] = frozenset()) -> pa.Table:
    t = generate_support_rows(0, start, count)
    t = t.append_column("_source", pa.array(["pool"] * count)).append_column(
        "_position", pa.array(range(start, start + count), pa.int64())
    )
    return core.to_stream(t, QUARANTINE_SCHEMA.empty_table(), known)


def test_annotator_writes_the_true_skills_and_records_failures(tmp_path) -> None:
    stream = _stream(0, 60)
    ann = SkillAnnotator(AnnotateConfig(**WORLD), str(tmp_path / "db"), {}, "annotation_cache")
    out = ann(stream)
    assert out.num_rows == 60
    truth = [true_skills(r) for r in generate_support_rows(0, 0, 60).to_pylist()]
    for skills, want in zip(out.column("skills").to_pylist(), truth):
        assert {skill_of_phrase(s) for s in skills} == set(want)
    # Noisy teacher: malformed replies become recorded failures with a reason, never silent drops.
    noisy = AnnotateConfig.model_validate({**WORLD, "engine_options": {"noise": {"malformed": 0.5}}, "max_retries": 0})
    bad = SkillAnnotator(noisy, str(tmp_path / "db2"), {}, "annotation_cache")(stream)
    failed = bad.filter(pc.equal(bad.column("status"), core.STATUS_ANNOTATION_FAILED))
    assert 0 < failed.num_rows < 60
    assert all("teacher" in r for r in failed.column("reason").to_pylist())
    assert core.annotation_failure_rows(bad).num_rows == failed.num_rows


def test_embedder_fills_vectors_only_for_new_rows() -> None:
    stream = _stream(0, 8, known=frozenset(generate_support_rows(0, 0, 3).column("id").to_pylist()))
    stream = SkillAnnotator(AnnotateConfig(**WORLD, use_cache=False), "unused", {}, "c")(stream)
    out = EmbedPredictor(EmbedConfig())(stream)
    vec = np.array(out.column("vector").to_pylist(), dtype=np.float32)
    status = out.column("status").to_pylist()
    assert vec.shape == (8, 384)
    norms = np.linalg.norm(vec, axis=1)
    for s, n in zip(status, norms):
        assert (n == pytest.approx(1.0, abs=1e-4)) if s == core.STATUS_OK else n == 0.0
    assert status.count(core.STATUS_KNOWN) == 3


def test_writer_commits_once_per_id_and_fills_the_cache(tmp_path) -> None:
    cfg = IndexConfig.model_validate({"pool": "p", "annotate": WORLD, "store": {"commit_rows": 10}})
    db = connect(str(tmp_path / "db"))
    ann = SkillAnnotator(cfg.annotate, str(tmp_path / "db"), {}, cfg.store.cache_table)
    emb = EmbedPredictor(cfg.embed)
    batch = emb(ann(_stream(0, 25)))
    writer = _Writer(cfg, db)
    writer.add(batch)
    writer.add(batch)  # the same ids again: duplicates within the pool, quarantined, not re-inserted
    writer.flush()
    ids = committed_ids(open_table(db, cfg.store.table)).to_pylist()
    assert sorted(ids) == sorted(set(batch.column("id").to_pylist()))
    assert writer.counts["indexed"] == 25 and writer.counts["duplicates"] == 25
    assert writer.counts["quarantined"] == 25
    keys = sorted(set(batch.column("annotation_key").to_pylist()))
    cached = lookup_cache(open_table(db, cfg.store.cache_table), keys)
    assert set(cached) == set(keys)
    # A second writer (a re-run) committing the same rows adds nothing.
    again = _Writer(cfg, db)
    again.add(batch)
    again.flush()
    assert again.counts["indexed"] == 0
    assert open_table(db, cfg.store.table).count_rows() == 25
