"""Reader pieces that need no Ray: format detection and the streaming JSON array parser."""

from __future__ import annotations

import json

import pytest

from edray.data.formats import detect_format
from edray.data.json_stream import JsonArrayError, iter_json_array
from tests.fixtures.data import support_records, write_hf, write_jsonl, write_lance, write_llava, write_parquet


def test_detect_format(tmp_path):
    recs = support_records(2)
    assert detect_format(write_parquet(recs, tmp_path / "p" / "a.parquet")) == "parquet"
    assert detect_format(tmp_path / "p") == "parquet"
    assert detect_format(write_jsonl(recs, tmp_path / "j")) == "jsonl"
    assert detect_format(tmp_path / "j") == "jsonl"
    assert detect_format(write_jsonl(recs, tmp_path / "j2", name="d.json")) == "jsonl"  # objects, one per line
    assert detect_format(write_llava(recs, tmp_path / "l")) == "llava"
    assert detect_format(tmp_path / "l") == "llava"
    assert detect_format(write_hf(recs, tmp_path / "hf")) == "hf"
    assert detect_format(write_hf(recs, tmp_path / "dd", split="train")) == "hf"
    assert detect_format(write_lance(recs, tmp_path / "x.lance")) == "lance"
    with pytest.raises(FileNotFoundError):
        detect_format(tmp_path / "nope")
    (tmp_path / "e").mkdir()
    with pytest.raises(ValueError, match="no Parquet"):
        detect_format(tmp_path / "e")


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_json_array_stream_matches_json_load(tmp_path, chunk):
    items = [{"id": i, "text": "é" * i + '"quoted" ]}', "n": [i, i * 1.5]} for i in range(30)]
    p = tmp_path / "a.json"
    p.write_text(json.dumps(items, indent=2, ensure_ascii=False))
    assert list(iter_json_array(str(p), max_element_chars=1 << 20, chunk_chars=chunk)) == items


@pytest.mark.parametrize(
    "text,n_ok,index",
    [
        ('[{"a": 1}, {"a": 2}', 2, 2),            # not closed
        ('[{"a": 1}, {"a": ', 1, 1),              # truncated inside an element
        ('[{"a": 1} {"a": 2}]', 1, 1),            # missing comma
        ('[{"a": 1}, {"a" 2}, {"a": 3}]', 1, 1),  # broken element
        ('{"a": 1}', 0, None),                    # not an array
        ("", 0, None),                            # empty file
    ],
)
def test_json_array_stream_reports_the_break(tmp_path, text, n_ok, index):
    p = tmp_path / "b.json"
    p.write_text(text)
    out = list(iter_json_array(str(p), max_element_chars=1 << 20, chunk_chars=4))
    assert [o for o in out if not isinstance(o, JsonArrayError)] == [{"a": i + 1} for i in range(n_ok)]
    assert isinstance(out[-1], JsonArrayError) and out[-1].index == index
    assert out[-1].reason.split(":")[0] in ("invalid JSON", "unreadable file")


def test_json_array_stream_empty_array_and_bad_utf8(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(" [ ] ")
    assert list(iter_json_array(str(p), 1 << 20)) == []
    p.write_bytes(b'[{"t": "caf\xe9"}, {"t": "ok"}]')
    out = list(iter_json_array(str(p), 1 << 20))
    assert out[1] == {"t": "ok"} and out[0]["t"] == "caf\udce9"  # kept, so the record alone is quarantined
