"""Every reader on Ray Data: round trips, the bad-record corpus, broken files, positions, streaming splits."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from edray.data.config import ReadConfig
from edray.data.core import normalize_record
from edray.data.quarantine import reason_category
from edray.data.readers import read_and_split, read_samples, split_batch
from edray.schemas import EVAL_SCHEMA, QUARANTINE_SCHEMA, SUPPORT_SCHEMA
from tests.fixtures.data import (
    BAD_CORPUS_LIMITS,
    eval_records,
    support_records,
    write_hf,
    write_jsonl,
    write_lance,
    write_llava,
    write_parquet,
)


def pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def records_mixed_ids() -> list[dict]:
    recs = support_records(6)
    for r in recs[::2]:
        del r["id"]  # half the records carry no id: theirs must be derived from content
    return recs


def expected_rows(records: list[dict], kind: str = "support") -> dict[str, dict]:
    out = {}
    for i, r in enumerate(records):
        row, q = normalize_record(r, kind, "x", i, ReadConfig())
        assert q is None
        out[row["id"]] = row
    return out


def _write(fmt: str, records: list[dict], tmp: Path) -> Path:
    if fmt == "parquet":
        return write_parquet(records, tmp / "d.parquet", row_group_size=2)
    if fmt.startswith("jsonl-"):
        return write_jsonl(records, tmp / "j", image_mode=fmt.split("-", 1)[1])
    if fmt == "llava":
        return write_llava(records, tmp / "l")
    if fmt == "hf":
        return write_hf(records, tmp / "hf")
    if fmt == "lance":
        return write_lance(records, tmp / "d.lance", max_rows_per_file=2)
    raise AssertionError(fmt)


ROUND_TRIP = ["parquet", "jsonl-relative", "jsonl-absolute", "jsonl-base64", "jsonl-data_url", "llava", "hf", "lance"]


@pytest.mark.parametrize("fmt", ROUND_TRIP)
def test_each_reader_round_trips_into_the_same_rows(ray_session, tmp_path, fmt):
    records = records_mixed_ids()
    expected = expected_rows(records)
    path = _write(fmt, records, tmp_path)
    batches = [t for t in ray_session.get(read_samples(str(path)).to_arrow_refs()) if t.num_rows]
    valid, quarantine = split_batch(pa.concat_tables(batches), "support")
    assert quarantine.num_rows == 0, quarantine.to_pylist()
    assert valid.schema == SUPPORT_SCHEMA
    got = {r["id"]: r for r in valid.to_pylist()}
    assert set(got) == set(expected)  # same ids, given and derived
    for rid, exp in expected.items():
        row = got[rid]
        assert row["messages"] == exp["messages"]
        assert row["source_task"] == exp["source_task"]
        assert (row["skills"] or None) == exp["skills"]
        assert json.loads(row["metadata"]) == json.loads(exp["metadata"])
        assert len(row["images"]) == len(exp["images"])
        for a, b in zip(row["images"], exp["images"]):
            assert np.array_equal(pixels(a), pixels(b))


def test_bad_corpus_every_kind_quarantined_with_its_reason(ray_session, bad_corpus):
    cfg = ReadConfig(**BAD_CORPUS_LIMITS)
    valid, quarantine = read_and_split(str(bad_corpus.jsonl), config=cfg)
    assert quarantine.schema == QUARANTINE_SCHEMA
    rows = quarantine.to_pylist()
    by_pos = {r["position"]: r for r in rows}
    assert len(by_pos) == len(rows)  # one reason per record
    for kind, line, field, category in bad_corpus.planted:
        assert line in by_pos, f"{kind} (line {line}) was not quarantined"
        q = by_pos[line]
        assert q["field"] == field, (kind, q)
        assert reason_category(q["reason"]) == category, (kind, q)
        assert q["source"] == str(bad_corpus.jsonl) and q["stage"] == "read"
        assert len(q["reason"]) > len(category) + 3  # a readable detail follows the category
    assert len(rows) == len(bad_corpus.planted)  # nothing else quarantined
    assert len({c for *_, c in bad_corpus.planted}) >= 15  # at least 15 distinct kinds of reasons
    assert len({q["reason"] for q in rows}) == len(rows)  # every message is specific to its record
    got = valid.take_all()
    ids = [r["id"] for r in got]
    assert len(ids) == len(set(ids))
    assert bad_corpus.valid_ids <= set(ids) and len(ids) == len(bad_corpus.valid_ids) + 1  # + the derived id
    lines = [ln for ln in bad_corpus.jsonl.read_bytes().split(b"\n") if ln.strip()]
    assert len(got) + len(rows) == len(lines)  # nothing silently dropped


def test_broken_files_are_reported_and_the_rest_goes_on(ray_session, tmp_path):
    good = support_records(3)
    folder = tmp_path / "pq"
    write_parquet(good, folder / "a.parquet")
    (folder / "b.parquet").write_bytes(b"PAR1 definitely not parquet")
    valid, q = read_and_split(str(folder))
    assert valid.count() == 3
    (row,) = q.to_pylist()
    assert row["source"].endswith("b.parquet") and row["field"] == "<file>"
    assert reason_category(row["reason"]) == "unreadable file"

    llava = tmp_path / "llava"
    write_llava(good, llava, name="ok.json")
    write_llava(support_records(4, seed=1), llava, name="cut.json")
    text = (llava / "cut.json").read_text()
    (llava / "truncated.json").write_text(text[: int(len(text) * 0.6)])
    (llava / "cut.json").unlink()
    (llava / "object.json").write_text('{"not": "an array"}')
    write_llava(support_records(3, seed=2), llava, name="mid.json")
    items = json.loads((llava / "mid.json").read_text())
    broken_mid = json.dumps(items[:2])[:-1] + ', {"id": "zz", "conversations": [}, ' + json.dumps(items[2]) + "]"
    (llava / "mid.json").write_text(broken_mid)
    valid, q = read_and_split(str(llava), fmt="llava")
    rows = {Path(r["source"]).name: r for r in q.to_pylist()}
    assert set(rows) == {"truncated.json", "object.json", "mid.json"} and q.num_rows == 3
    assert reason_category(rows["object.json"]["reason"]) == "unreadable file"
    assert reason_category(rows["truncated.json"]["reason"]) == "invalid JSON"
    assert rows["mid.json"]["position"] == 2 and reason_category(rows["mid.json"]["reason"]) == "invalid JSON"
    ids = [r["id"] for r in valid.take_all()]
    # ok.json whole, mid.json's two elements before the break, truncated.json's complete elements.
    assert {r["id"] for r in good} | {"s2-0", "s2-1"} <= set(ids) and "s2-2" not in ids
    truncated_ids = {i for i in ids if i.startswith("s1-")}
    assert truncated_ids and len(truncated_ids) < 4


def test_duplicates_across_files_keep_the_first_by_source_and_position(ray_session, tmp_path):
    recs = support_records(4)
    write_jsonl(recs, tmp_path, name="a.jsonl")
    write_jsonl(recs[1:3], tmp_path, name="b.jsonl")
    valid, q = read_and_split(str(tmp_path), fmt="jsonl")
    assert sorted(r["id"] for r in valid.take_all()) == sorted(r["id"] for r in recs)
    rows = q.to_pylist()
    assert {(Path(r["source"]).name, r["position"]) for r in rows} == {("b.jsonl", 0), ("b.jsonl", 1)}
    assert all(reason_category(r["reason"]) == "duplicate id" and "a.jsonl" in r["reason"] for r in rows)


def test_jsonl_chunks_keep_exact_line_numbers(ray_session, tmp_path):
    recs = support_records(40, seed=1)
    for i, r in enumerate(recs):
        r["id"] = f"r{i}"
        r["images"] = []
        r["messages"][0]["content"] = r["messages"][0]["content"].replace("<image>\n", "") + " pad" * (i % 7)
    path = write_jsonl(recs, tmp_path, image_mode="base64")
    lines = path.read_text().splitlines()
    bad_at = {5, 17, 33, 39}
    for i in bad_at:
        lines[i] = '{"id": "bad%d", "messages": []}' % i
    path.write_text("\n".join(lines) + "\n")
    cfg = ReadConfig(chunk_bytes=1024)
    assert path.stat().st_size > 4 * cfg.chunk_bytes  # several chunks
    table = pa.concat_tables(ray_session.get(read_samples(str(path), config=cfg).to_arrow_refs()))
    rows = table.to_pylist()
    assert sorted(r["_position"] for r in rows) == list(range(40))  # every line exactly once
    for r in rows:
        if r["_position"] in bad_at:
            assert r["id"] == f"bad{r['_position']}" and reason_category(r["_error_reason"]) == "empty conversation"
        else:
            assert r["id"] == f"r{r['_position']}" and r["_error_reason"] is None


@pytest.mark.parametrize("fmt", ["parquet", "lance"])
def test_positions_across_row_groups_and_fragments(ray_session, tmp_path, fmt):
    recs = support_records(7)
    recs[4]["messages"] = []
    path = write_parquet(recs, tmp_path / "d.parquet", row_group_size=2) if fmt == "parquet" else \
        write_lance(recs, tmp_path / "d.lance", max_rows_per_file=3)
    valid, q = read_and_split(str(path))
    assert valid.count() == 6
    (row,) = q.to_pylist()
    assert row["position"] == 4 and row["record_id"] == recs[4]["id"] and row["field"] == "messages"


def test_eval_samples_from_a_dataset_dict_take_the_split_name(ray_session, tmp_path):
    recs = eval_records(4)
    for r in recs:
        r.pop("split")
    recs[1]["answer_type"] = "essay"
    path = write_hf(recs, tmp_path / "dd", split="test")
    valid, q = read_and_split(str(path), kind="eval")
    rows = valid.take_all()
    assert len(rows) == 3 and {r["split"] for r in rows} == {"test"}
    assert {r["id"] for r in rows} == {"e0", "e2", "e3"}
    assert all(r["source_task"] == "target" for r in rows)
    assert pa.Table.from_pylist(rows, schema=EVAL_SCHEMA).num_rows == 3
    (bad,) = q.to_pylist()
    assert bad["record_id"] == "e1" and bad["field"] == "answer_type"


def test_split_batch_inside_a_downstream_map_batches(ray_session, bad_corpus):
    cfg = ReadConfig(**BAD_CORPUS_LIMITS)

    def keep_valid(batch: pa.Table) -> pa.Table:
        valid, quarantine = split_batch(batch, "support", stage="index")
        assert quarantine.schema == QUARANTINE_SCHEMA
        return valid

    ds = read_samples(str(bad_corpus.jsonl), config=cfg).map_batches(keep_valid, batch_format="pyarrow")
    rows = ds.take_all()
    # Without the duplicate pass the second "ok-0" is still valid here: streaming sinks dedupe by id.
    assert len(rows) == len(bad_corpus.valid_ids) + 2
    assert Counter(r["id"] for r in rows)["ok-0"] == 2


def test_broken_hf_folders_are_reported(ray_session, tmp_path):
    bad_state = tmp_path / "state_broken"
    bad_state.mkdir()
    (bad_state / "state.json").write_text("{not json")
    valid, q = read_and_split(str(bad_state))
    assert valid.count() == 0
    (row,) = q.to_pylist()
    assert row["field"] == "<file>" and reason_category(row["reason"]) == "unreadable file"

    cut = write_hf(support_records(3), tmp_path / "cut")
    (arrow,) = cut.glob("*.arrow")
    arrow.write_bytes(arrow.read_bytes()[:200])  # the Arrow stream breaks
    valid, q = read_and_split(str(cut), fmt="hf")
    (row,) = q.to_pylist()
    assert row["source"] == str(arrow) and reason_category(row["reason"]) == "unreadable file"
    assert valid.count() == 0
