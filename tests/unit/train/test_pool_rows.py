"""The in-process runner's pool reads: a small pool kept in memory and a large one read per selection
give the same rows."""

from __future__ import annotations

import pyarrow.parquet as pq

from edray.train import datasets


def test_small_and_large_pool_reads_agree(tmp_path, monkeypatch) -> None:
    from edray.world.pool import generate_support_rows

    table = generate_support_rows(3, 0, 120)
    pq.write_table(table, tmp_path / "pool.parquet")
    ids = table["id"].to_pylist()[7:31] + ["not-in-the-pool"]
    cached = datasets._pool_rows(str(tmp_path / "pool.parquet"), ids)
    monkeypatch.setattr(datasets, "POOL_CACHE_BYTES", 0)
    streamed = datasets._pool_rows(str(tmp_path / "pool.parquet"), ids)
    assert sorted(cached["id"].to_pylist()) == sorted(streamed["id"].to_pylist()) == sorted(ids[:-1])
    assert cached.sort_by("id").equals(streamed.sort_by("id"))
