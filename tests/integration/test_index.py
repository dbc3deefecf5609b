"""The index stage end to end on a world pool: counts, quarantine, no-op re-run, growth, cache, search."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from edray.index import core, job
from edray.index.config import IndexConfig
from edray.index.search import open_index, search
from edray.index.store import connect
from edray.schemas import QUARANTINE, QUARANTINE_SCHEMA, SUMMARY
from edray.world.pool import true_skills
from tests.fixtures.index import PLANTED_IMAGE

pytestmark = pytest.mark.slow


def _config(pool: Path, **over: object) -> IndexConfig:
    data = {
        "pool": str(pool),
        "progress_bars": False,
        "read": {"batch_rows": 100},
        "annotate": {"actors": 1, "num_cpus": 0.25, "batch_size": 50, "backend": "engine",
                     "engine": "edray.world.teacher:WorldTeacher"},
        "embed": {"actors": 1, "num_cpus": 0.5, "batch_size": 64},
        "store": {"commit_rows": 200},
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        data.setdefault(section, {})[field] = value
    return IndexConfig.model_validate(data)


@pytest.fixture(scope="module")
def indexed(ray_session, index_world_pool, tmp_path_factory):
    """Index a private copy of the world pool once for the module."""
    root = tmp_path_factory.mktemp("index_run")
    pool = root / "pool"
    shutil.copytree(index_world_pool.folder, pool)
    cfg = _config(pool)
    path = job.run(cfg, root / "run")
    return cfg, root, pool, path


def _keys(files: list[Path], model: str = "world-teacher", version: str = "v1") -> list[str]:
    """Annotation keys of the valid rows of Parquet pool files (the test's own reading of the pool)."""
    keys = []
    for f in files:
        t = pq.read_table(f, columns=["messages", "images"])
        for msgs, images in zip(t.column("messages").to_pylist(), t.column("images").to_pylist()):
            if msgs and PLANTED_IMAGE not in images:
                keys.append(core.annotation_key(*core.instruction_and_answer(msgs), model, version))
    return keys


def _table_ids(path: Path) -> list[str]:
    info = json.loads((path / "index_info.json").read_text())
    table = connect(info["uri"]).open_table(info["table"])
    return table.to_lance().to_table(columns=["id"]).column("id").to_pylist()


def test_every_valid_row_once_and_bad_rows_quarantined(indexed, index_world_pool) -> None:
    cfg, root, pool, path = indexed
    ids = _table_ids(path)
    assert len(ids) == index_world_pool.valid_rows
    assert len(set(ids)) == len(ids)
    q = pq.read_table(path / QUARANTINE)
    assert q.schema == QUARANTINE_SCHEMA
    assert q.num_rows == index_world_pool.planted_bad
    assert Counter(q.column("field").to_pylist()) == {"images[0]": 3, "messages": 2}
    manifest = json.loads((path / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["quarantined"] == index_world_pool.planted_bad
    assert counts["indexed"] == counts["table_rows"] == index_world_pool.valid_rows
    assert counts["annotation_failures"] == 0
    # One annotator actor: one teacher request per distinct sample text, every repeat is a cache hit.
    distinct = len(set(_keys([index_world_pool.base])))
    assert counts["teacher_requests"] == distinct < index_world_pool.valid_rows
    assert counts["cache_hits"] == index_world_pool.valid_rows - distinct
    assert counts["rows_in"] == index_world_pool.valid_rows + index_world_pool.planted_bad
    summary = json.loads((path / SUMMARY).read_text())
    assert summary["stages"]["embed"]["rows"] == index_world_pool.valid_rows
    assert summary["stages"]["embed"]["rows_per_actor_s"] > 0


def test_same_config_is_a_no_op(indexed) -> None:
    cfg, root, pool, path = indexed
    before = json.loads((path / "manifest.json").read_text())
    again = job.run(cfg, root / "run")
    assert json.loads((again / "manifest.json").read_text())["finished_at"] == before["finished_at"]


def test_bm25_dense_hybrid_find_the_skill(indexed) -> None:
    cfg, root, pool, path = indexed
    handle = open_index(path)
    # Ground truth comes from the world's metadata, which the pipeline never reads.
    rows = handle.table.to_lance().to_table(columns=["id", "metadata"]).to_pylist()
    truth = {r["id"]: set(true_skills(r)) for r in rows}
    have = sum("counting_by_color" in s for s in truth.values())
    assert have >= 10, "the fixture pool must hold enough samples of the skill"
    for mode, query in (
        ("bm25", "counting objects of a given colour"),
        ("dense", "how many things of one particular colour are there"),
        ("hybrid", "counting objects of a given colour"),
    ):
        hits = search(handle.table, query, mode=mode, k=10, embed=handle.embed)
        assert hits.num_rows == 10
        assert hits.column("rank").to_pylist() == list(range(1, 11))
        scores = hits.column("score").to_pylist()
        assert scores == sorted(scores, reverse=True)
        good = sum("counting_by_color" in truth[i] for i in hits.column("id").to_pylist())
        assert good >= 8, f"{mode}: only {good}/10 hits exercise counting_by_color"
    # Filters apply before ranking: rows outside the unfiltered top 10 come back when the filter keeps
    # only them (a filter applied after ranking would leave nothing).
    query = "counting objects of a given colour"
    top = set(search(handle.table, query, mode="hybrid", k=10, embed=handle.embed).column("id").to_pylist())
    outside = sorted(r["id"] for r in rows if r["id"] not in top)[:3]
    for mode in ("dense", "hybrid"):
        only = search(handle.table, query, mode=mode, k=5, embed=handle.embed, filters={"id": outside})
        assert sorted(only.column("id").to_pylist()) == outside, mode


def test_growing_pool_indexes_only_new_rows(indexed, index_world_pool) -> None:
    cfg, root, pool, path = indexed
    shutil.copy(index_world_pool.extra, pool / index_world_pool.extra.name)
    path = job.run(cfg, root / "run")
    counts = json.loads((path / "manifest.json").read_text())["counts"]
    new = index_world_pool.extra_rows
    assert counts["already_indexed"] == index_world_pool.valid_rows
    assert counts["annotate_rows"] == counts["embedded"] == counts["indexed"] == new
    # The teacher is asked only about sample texts it has never annotated; the rest come from the cache.
    old = set(_keys([index_world_pool.base]))
    fresh = set(_keys([index_world_pool.extra])) - old
    assert counts["teacher_requests"] == len(fresh)
    assert counts["cache_hits"] == new - len(fresh)
    ids = _table_ids(path)
    assert len(ids) == len(set(ids)) == index_world_pool.valid_rows + new
    # The quarantine is recomputed from the whole pool each run: still exactly the planted rows.
    assert counts["quarantined"] == index_world_pool.planted_bad


def test_rebuilt_table_is_annotated_from_the_cache(indexed) -> None:
    cfg, root, pool, path = indexed
    # A new table in the same database: every row is new to it, every annotation is in the cache.
    uri = json.loads((path / "index_info.json").read_text())["uri"]
    store = cfg.store.model_copy(update={"table": "support_v2", "uri": uri})
    out = job.run(cfg.model_copy(update={"store": store}), root / "run_v2")
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["annotated"] == 0
    assert counts["cache_hits"] == counts["indexed"] == counts["table_rows"] > 0
