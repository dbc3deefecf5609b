"""The evaluate job's file-level helpers: reading splits and resolving model folders."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from edray.evaluate.config import ModelSpec
from edray.evaluate.job import read_suite, resolve_model
from edray.world.pool import generate_eval_rows


def test_read_suite_sorts_limits_and_rejects_duplicates(tmp_path):
    a = generate_eval_rows("corner", "test", 3, seed=2)
    pq.write_table(a, tmp_path / "a.parquet")
    rows = read_suite([str(tmp_path / "a.parquet")])
    assert [r["id"] for r in rows] == sorted(a.column("id").to_pylist())
    assert len(read_suite([str(tmp_path / "a.parquet")], limit=2)) == 2
    with pytest.raises(ValueError, match="more than once"):
        read_suite([str(tmp_path / "a.parquet"), str(tmp_path / "a.parquet")])
    with pytest.raises(FileNotFoundError):
        read_suite([str(tmp_path / "missing.parquet")])
    pq.write_table(generate_eval_rows("corner", "validation", 2, seed=2), tmp_path / "v.parquet")
    both = [str(tmp_path / "a.parquet"), str(tmp_path / "v.parquet")]
    assert len(read_suite(both)) == 5
    assert {r["split"] for r in read_suite(both, split="test")} == {"test"} and len(read_suite(both, split="test")) == 3
    with pytest.raises(ValueError, match="split 'other'"):
        read_suite(both, split="other")
    pq.write_table(a.drop_columns(["answer"]), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="answer"):
        read_suite([str(tmp_path / "bad.parquet")])


def test_resolve_model_looks_inside_train_folders(tmp_path):
    base = ModelSpec(name="base", path=str(tmp_path / "base"))
    (tmp_path / "lora_run" / "adapter").mkdir(parents=True)
    (tmp_path / "full_run" / "model").mkdir(parents=True)
    (tmp_path / "bare_adapter").mkdir()
    (tmp_path / "bare_adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "folder").mkdir()
    lora = resolve_model(ModelSpec(name="l", arm="lora", path=str(tmp_path / "lora_run")), base)
    assert (lora.path, lora.adapter) == (base.path, str(tmp_path / "lora_run" / "adapter"))
    full = resolve_model(ModelSpec(name="f", arm="full", path=str(tmp_path / "full_run")), base)
    assert (full.path, full.adapter) == (str(tmp_path / "full_run" / "model"), None)
    bare = resolve_model(ModelSpec(name="b", path=str(tmp_path / "bare_adapter")), base)
    assert bare.adapter == str(tmp_path / "bare_adapter") and bare.path == base.path
    plain = resolve_model(ModelSpec(name="p", path=str(tmp_path / "folder"), served_name="srv"), base)
    assert (plain.path, plain.adapter, plain.served_name) == (str(tmp_path / "folder"), None, "srv")
    with pytest.raises(FileNotFoundError, match="'x'"):
        resolve_model(ModelSpec(name="x", path=str(tmp_path / "nowhere")), base)
