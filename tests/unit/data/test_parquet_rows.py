"""The one reader of evaluation rows, shared by the diagnose and evaluate stages."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edray.data.parquet_rows import read_eval_rows, read_parquet_rows
from edray.diagnose.job import read_validation
from edray.schemas import EVAL_SCHEMA


def _rows(ids: list[str], task: str = "t", split: str = "validation") -> pa.Table:
    return pa.Table.from_pylist(
        [
            {"id": i, "source_task": task, "images": [], "messages": [{"role": "user", "content": f"q{i}"}],
             "answer": "yes", "answer_type": "yes_no", "choices": ["yes", "no"], "split": split}
            for i in ids
        ],
        schema=EVAL_SCHEMA,
    )  # fmt: skip


def test_rows_come_sorted_by_id_filtered_and_limited(tmp_path):
    pq.write_table(_rows(["c", "a"], task="x"), tmp_path / "one.parquet")
    pq.write_table(_rows(["b", "d"], task="y", split="test"), tmp_path / "two.parquet")
    both = [tmp_path / "one.parquet", tmp_path / "two.parquet"]
    assert [r["id"] for r in read_eval_rows(both)] == ["a", "b", "c", "d"]
    assert [r["id"] for r in read_eval_rows(both, task="x")] == ["a", "c"]
    assert [r["id"] for r in read_eval_rows(both, split="test")] == ["b", "d"]
    assert [r["id"] for r in read_eval_rows(both, limit=3)] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="no rows of split 'test' and task 'x'"):
        read_eval_rows(both, split="test", task="x")


def test_a_repeated_id_is_refused_by_every_stage_that_reads_evaluation_rows(tmp_path):
    pq.write_table(_rows(["a", "b", "a"]), tmp_path / "dup.parquet")
    with pytest.raises(ValueError, match="'a' appears more than once"):
        read_eval_rows(tmp_path / "dup.parquet")
    # The diagnose stage reads its validation set through the same reader (it used to keep both rows).
    with pytest.raises(ValueError, match="'a' appears more than once"):
        read_validation(str(tmp_path / "dup.parquet"))
    pq.write_table(_rows(["a"]), tmp_path / "x.parquet")
    pq.write_table(_rows(["a"], split="test"), tmp_path / "y.parquet")
    with pytest.raises(ValueError, match="appears more than once"):
        read_eval_rows([tmp_path / "x.parquet", tmp_path / "y.parquet"])
    # Rows outside the kept split never collide.
    assert [r["split"] for r in read_eval_rows([tmp_path / "x.parquet", tmp_path / "y.parquet"], split="test")] == ["test"]


def test_missing_file_and_missing_column(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_eval_rows(tmp_path / "missing.parquet")
    pq.write_table(_rows(["a"]).drop_columns(["answer_type"]), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['answer_type'\]"):
        read_eval_rows(tmp_path / "bad.parquet")
    assert read_parquet_rows(tmp_path / "bad.parquet", ["id"], "table", columns=["id"]) == [{"id": "a"}]
