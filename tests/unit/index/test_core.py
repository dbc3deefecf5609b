"""Pure functions of the index stage: stream building, keys, parsing, index plan, fusion."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from edray.index import core
from edray.schemas import QUARANTINE_SCHEMA, SUPPORT_SCHEMA


def _support(ids: list[str]) -> pa.Table:
    rows = {
        "id": ids,
        "source_task": ["t"] * len(ids),
        "images": [[b"png"]] * len(ids),
        "messages": [[{"role": "user", "content": f"<image>\nHow many {i}?"}, {"role": "assistant", "content": f"ans {i}"}] for i in ids],
        "skills": [None] * len(ids),
        "metadata": ["{}"] * len(ids),
    }
    t = pa.table(rows, schema=SUPPORT_SCHEMA)
    return t.append_column("_source", pa.array(["pool.parquet"] * len(ids))).append_column(
        "_position", pa.array(range(len(ids)), pa.int64())
    )


def test_instruction_and_answer_drops_placeholders_and_keeps_last_answer() -> None:
    msgs = [
        {"role": "user", "content": "<image>\nWhat colour?"},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "And the shape?"},
        {"role": "assistant", "content": "square"},
    ]
    ins, ans = core.instruction_and_answer(msgs)
    assert ins == "What colour?\nAnd the shape?"
    assert ans == "square"


def test_annotation_key_changes_with_each_part() -> None:
    base = core.annotation_key("q", "a", "m", "v1")
    assert base == core.annotation_key("q", "a", "m", "v1")
    variants = {core.annotation_key(*args) for args in [("q2", "a", "m", "v1"), ("q", "a2", "m", "v1"),
                                                        ("q", "a", "m2", "v1"), ("q", "a", "m", "v2")]}
    assert base not in variants and len(variants) == 4


@pytest.mark.parametrize(
    "text,expected",
    [
        ('{"skills": ["Color recognition", "object counting"]}', ["color recognition", "object counting"]),
        ('["counting", "shape recognition", "counting"]', ["counting", "shape recognition"]),
        ("The skill exercised is counting objects.", ["counting objects"]),
        ("Skills: counting by colour\n- shape recognition\n2) size", ["counting by colour", "shape recognition", "size"]),
        ("one; two; three; four", ["one", "two", "three"]),
    ],
)
def test_parse_skills_formats(text: str, expected: list[str]) -> None:
    assert core.parse_skills(text, max_skills=3) == expected


def test_parse_skills_rejects_empty() -> None:
    with pytest.raises(ValueError, match="no skill"):
        core.parse_skills("  \n ", 3)


def test_text_to_embed_modes() -> None:
    assert core.text_to_embed("skill", "s", "i", "a") == "s"
    assert core.text_to_embed("instruction", "s", "i", "a") == "i"
    assert core.text_to_embed("instruction_answer", "s", "i", "a") == "i\na"
    with pytest.raises(ValueError):
        core.text_to_embed("other", "s", "i", "a")


def test_to_stream_marks_known_duplicates_and_quarantine() -> None:
    valid = _support(["a", "b", "a", "c"])
    bad = pa.table(
        {"record_id": ["x"], "source": ["pool.parquet"], "position": [9], "field": ["images"],
         "reason": ["image: corrupt"], "stage": ["index"], "raw": [None]},
        schema=QUARANTINE_SCHEMA,
    )
    s = core.to_stream(valid, bad, frozenset({"b"}))
    assert s.schema == core.STREAM_SCHEMA
    by = list(zip(s.column("id").to_pylist(), s.column("status").to_pylist()))
    assert by == [("a", "ok"), ("b", "known"), ("a", "quarantine"), ("c", "ok"), ("x", "quarantine")]
    # Known rows drop their payload: they are never annotated or embedded again.
    assert s.column("images").to_pylist()[1] == []
    assert s.column("instruction").to_pylist()[0] == "How many a?"
    q = core.quarantine_rows(s)
    assert q.schema == QUARANTINE_SCHEMA
    assert sorted(q.column("reason").to_pylist()) == ["duplicate id 'a' within the pool", "image: corrupt"]


def test_table_rows_and_cache_rows() -> None:
    s = core.to_stream(_support(["a", "b"]), QUARANTINE_SCHEMA.empty_table(), frozenset())
    s = s.append_column("skills", pa.array([["x"], ["y"]], pa.list_(pa.string())))
    s = s.append_column("skill_text", pa.array(["x", "y"]))
    s = s.append_column("annotation_key", pa.array(["k1", "k2"]))
    s = s.append_column("cache_hit", pa.array([True, False]))
    s = s.append_column("annotate_s", pa.array([0.0, 0.0]))
    s = s.append_column("vector", core.vectors_to_arrow(np.ones((2, 4))))
    inline = core.table_rows(s, "inline")
    ref = core.table_rows(s, "reference")
    assert {"images", "messages", "metadata"} <= set(inline.column_names)
    assert not {"images", "messages"} & set(ref.column_names)
    assert {"source", "position"} <= set(ref.column_names)
    cache = core.cache_rows(s, "m", "v1")
    assert cache.column("key").to_pylist() == ["k2"]  # hits are not re-written


def test_plan_vector_index_by_size() -> None:
    assert core.plan_vector_index(1000, "auto", "cosine", 50_000).index_type is None
    big = core.plan_vector_index(1_000_000, "auto", "cosine", 50_000)
    assert big.index_type == "IVF_SQ" and big.num_partitions == 1000
    assert core.plan_vector_index(1_000_000, "none", "cosine", 50_000).index_type is None
    h = core.plan_vector_index(100_000, "IVF_HNSW_SQ", "l2", 0, 24, hnsw_m=16)
    assert (h.index_type, h.num_partitions, h.m) == ("IVF_HNSW_SQ", 24, 16)


def test_auto_nprobes() -> None:
    assert core.auto_nprobes(0) == 1
    assert core.auto_nprobes(100) == 16
    assert core.auto_nprobes(1000) == 100
    assert core.auto_nprobes(10) == 10


def test_rrf_fuse_hand_computed() -> None:
    fused = dict(core.rrf_fuse([["a", "b", "c"], ["b", "d"]], k=60))
    assert fused["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert fused["a"] == pytest.approx(1 / 61)
    assert fused["d"] == pytest.approx(1 / 62)
    assert [rid for rid, _ in core.rrf_fuse([["a", "b", "c"], ["b", "d"]], k=60)][0] == "b"


def test_recall_at_k() -> None:
    assert core.recall_at_k([[1, 2, 3]], [[3, 2, 9]], 3) == pytest.approx(2 / 3)
