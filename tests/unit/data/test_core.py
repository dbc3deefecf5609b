"""Pure normalization rules: every quarantine reason, LLaVA / OpenAI shapes, ids, eval fields, splitting."""

from __future__ import annotations

import base64
import json

import pyarrow as pa
import pytest

from edray.data.config import ReadConfig
from edray.data.core import content_id, normalize_record
from edray.data.dedup import mark_duplicates_in_table
from edray.data.images import image_error, image_path_of
from edray.data.quarantine import REASONS, read_row, reason_category, rows_to_table, split_quarantine
from edray.schemas import EVAL_SCHEMA, QUARANTINE_SCHEMA, SUPPORT_SCHEMA
from tests.fixtures.data import png_bytes

PNG = png_bytes((1, 2, 3), (8, 8))
CFG = ReadConfig(max_image_bytes=4000, max_image_pixels=10_000, max_text_chars=200, max_turns=6, max_images=3)


def conv(q: str = "<image>\nWhat?", a: str = "This.") -> list[dict[str, str]]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def norm(raw, kind="support", cfg=CFG):
    return normalize_record(raw, kind, "src/file.jsonl", 7, cfg)


def test_valid_record_normalizes_to_schema():
    row, q = norm({"id": "a", "images": [PNG], "messages": conv(), "skills": ["color"], "metadata": {"k": 1}})
    assert q is None
    assert row["id"] == "a" and row["images"] == [PNG] and row["skills"] == ["color"]
    assert json.loads(row["metadata"]) == {"k": 1}
    assert row["source_task"] == "file"  # defaults to the file's name
    pa.Table.from_pylist([row], schema=SUPPORT_SCHEMA)  # fits the schema exactly


def test_llava_conversation_and_single_image_key():
    raw = {"id": 3, "image": PNG, "conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}]}
    row, q = norm(raw)
    assert q is None
    assert row["id"] == "3"
    assert row["messages"] == [{"role": "user", "content": "<image>\nQ?"}, {"role": "assistant", "content": "A."}]


def test_openai_content_parts_become_placeholders():
    raw = {"images": [PNG], "messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": "That."},
    ]}
    row, q = norm(raw)
    assert q is None and row["messages"][0]["content"] == "<image>\nWhat?"


@pytest.mark.parametrize("ref", [base64.b64encode(PNG).decode(), "data:image/png;base64," + base64.b64encode(PNG).decode(),
                                 {"bytes": PNG, "path": "x.png"}])
def test_image_references_decode_to_the_same_bytes(ref):
    row, q = norm({"images": [ref], "messages": conv()})
    assert q is None and row["images"] == [PNG]


def test_missing_placeholders_are_inserted_or_rejected():
    row, q = norm({"images": [PNG, PNG], "messages": conv("Two pictures?")})
    assert q is None and row["messages"][0]["content"] == "<image>\n<image>\nTwo pictures?"
    strict = CFG.model_copy(update={"insert_missing_placeholders": False})
    row, q = norm({"images": [PNG], "messages": conv("No mark?")}, cfg=strict)
    assert row is None and reason_category(q["reason"]) == "placeholder mismatch" and q["field"] == "images"


def test_content_id_is_stable_and_content_sensitive():
    a, _ = norm({"images": [PNG], "messages": conv()})
    b, _ = norm({"images": [PNG], "messages": conv()})
    c, _ = norm({"images": [PNG], "messages": conv(a="Other.")})
    d, _ = norm({"images": [png_bytes((1, 2, 4), (8, 8))], "messages": conv()})
    assert a["id"] == b["id"] == content_id(a["messages"], [PNG])
    assert len({a["id"], c["id"], d["id"]}) == 3
    assert len(a["id"]) == 32 and set(a["id"]) <= set("0123456789abcdef")


def test_content_id_known_values():
    # Known values: a change in the hashing scheme would silently change every derived id. Each is the
    # first 32 hex digits of SHA-256 over the canonical JSON (sorted keys, no spaces, images as their
    # own SHA-256), computed by hand from the JSON text shown.
    # sha256('{"images":[],"messages":[["user","q"]]}')
    assert content_id([{"role": "user", "content": "q"}], []) == "01612374fd3e216f66de0e15a0c0e355"
    # sha256('{"answer":"B","choices":["red","blue"],"images":["075f8e3f...d9bb"],"messages":[["user","<image>\\nWhich?"]]}')
    # where 075f8e3f22fcb592f1c27b086375ceeaacc767bd43a4583cffd38685d3a1d9bb = sha256(b"\x89PNG fake")
    got = content_id([{"role": "user", "content": "<image>\nWhich?"}], [b"\x89PNG fake"], "B", ["red", "blue"])
    assert got == "f373bcf7f3f297995bcc8d1760401c0f"


# (raw record, expected field, expected reason category): each a distinct problem.
BAD = [
    ([1, 2], "<record>", "not an object"),
    ({"images": []}, "messages", "missing field"),
    ({"messages": 5}, "messages", "wrong type"),
    ({"messages": []}, "messages", "empty conversation"),
    ({"messages": [7]}, "messages[0]", "malformed turn"),
    ({"messages": [{"content": "x"}]}, "messages[0].role", "missing field"),
    ({"messages": [{"role": "user"}]}, "messages[0].content", "missing field"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "unknown role"),
    ({"messages": conv("q") * 4}, "messages", "too many turns"),
    ({"messages": conv("q" * 201)}, "messages[0].content", "text too long"),
    ({"messages": [{"role": "user", "content": b"caf\xe9"}, {"role": "assistant", "content": "x"}]}, "messages[0].content", "invalid UTF-8"),
    ({"messages": conv("q\udcff")}, "messages[0].content", "invalid UTF-8"),
    ({"messages": [{"role": "user", "content": "q"}]}, "messages[0]", "no assistant answer"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}, "messages[1]", "no assistant answer"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}, "messages", "no user turn"),
    ({"images": [PNG], "messages": conv("<image><image>")}, "images", "placeholder mismatch"),
    ({"images": [PNG] * 4, "messages": conv("q")}, "images", "too many images"),
    ({"images": 3, "messages": conv()}, "images", "wrong type"),
    ({"images": [b"not an image"], "messages": conv()}, "images[0]", "corrupt image"),
    ({"images": [b""], "messages": conv()}, "images[0]", "corrupt image"),
    ({"images": [PNG + b"\0" * 4000], "messages": conv()}, "images[0]", "image too large"),
    ({"images": [png_bytes((0, 0, 0), (101, 100))], "messages": conv()}, "images[0]", "too many pixels"),
    ({"images": ["data:image/png;base64,@@@"], "messages": conv()}, "images[0]", "invalid base64"),
    ({"images": ["http://example.com/a.png"], "messages": conv()}, "images[0]", "remote image"),
    ({"images": [image_error("image not found", "a.png")], "messages": conv()}, "images[0]", "image not found"),
    ({"images": [{"bytes": None, "path": None}], "messages": conv()}, "images[0]", "missing field"),
    ({"id": 1.5, "messages": conv("q")}, "id", "wrong type"),
    ({"messages": conv("q"), "source_task": ["x"]}, "source_task", "wrong type"),
    ({"messages": conv("q"), "skills": "color"}, "skills", "wrong type"),
    ({"messages": conv("q"), "metadata": "[1]"}, "metadata", "bad metadata"),
    ({"messages": conv("q"), "metadata": 3}, "metadata", "bad metadata"),
]


@pytest.mark.parametrize("raw,field,category", BAD, ids=[f"{c}-{f}" for _, f, c in BAD])
def test_bad_support_records_are_quarantined_with_field_and_reason(raw, field, category):
    row, q = norm(raw)
    assert row is None
    assert q["field"] == field
    assert reason_category(q["reason"]) == category, q["reason"]
    assert category in REASONS
    assert q["source"] == "src/file.jsonl" and q["position"] == 7 and q["stage"] == "read"
    pa.Table.from_pylist([q], schema=QUARANTINE_SCHEMA)


def test_quarantine_keeps_id_and_an_excerpt_without_bytes():
    _, q = norm({"id": "keep-me", "images": [b"junk" * 100], "messages": conv()})
    assert q["record_id"] == "keep-me"
    assert "<400 bytes>" in q["raw"] and "junk" not in q["raw"]


def ev(**kw):
    base = {"images": [PNG], "messages": [{"role": "user", "content": "<image>\nWhich?"}], "answer": "B",
            "choices": ["red", "green"], "answer_type": "multiple_choice"}
    base.update(kw)
    return base


def test_eval_record_and_inferred_answer_type():
    row, q = norm(ev(), kind="eval")
    assert q is None and row["split"] == "validation" and row["answer_type"] == "multiple_choice"
    pa.Table.from_pylist([row], schema=EVAL_SCHEMA)
    for answer, expected in (("yes", "yes_no"), (3, "number"), ("a red cube", "open")):
        row, q = norm(ev(answer=answer, choices=None, answer_type=None), kind="eval")
        assert q is None and row["answer_type"] == expected and isinstance(row["answer"], str)
    row, _ = normalize_record(ev(), "eval", "f", 0, CFG, default_split="test")
    assert row["split"] == "test"


BAD_EVAL = [
    (ev(answer=None), "answer", "missing answer"),
    (ev(answer="  "), "answer", "missing answer"),
    (ev(answer={"x": 1}), "answer", "wrong type"),
    (ev(answer_type="essay"), "answer_type", "bad answer_type"),
    (ev(choices="red, green"), "choices", "bad choices"),
    (ev(choices=["red", 2]), "choices[1]", "bad choices"),
    (ev(choices=[]), "choices", "bad choices"),
    (ev(choices=None), "choices", "bad choices"),
    (ev(answer="D"), "answer", "answer not in choices"),
    (ev(split=["x"]), "split", "wrong type"),
]


@pytest.mark.parametrize("raw,field,category", BAD_EVAL, ids=[f"{c}-{f}" for _, f, c in BAD_EVAL])
def test_bad_eval_records(raw, field, category):
    row, q = norm(raw, kind="eval")
    assert row is None and q["field"] == field and reason_category(q["reason"]) == category, q


def test_eval_samples_need_no_assistant_turn_but_support_samples_do():
    raw = ev()
    assert norm(raw, kind="eval")[1] is None
    assert reason_category(norm(raw, kind="support")[1]["reason"]) == "no assistant answer"


def test_image_path_of():
    assert image_path_of("images/a.png") == "images/a.png"
    assert image_path_of({"bytes": None, "path": "/x/a.png"}) == "/x/a.png"
    assert image_path_of("file:///x/a.png") == "/x/a.png"
    assert image_path_of(PNG) is None
    assert image_path_of("data:image/png;base64,AAAA") is None
    assert image_path_of("https://x/a.png") is None
    assert image_path_of(base64.b64encode(PNG).decode()) is None


def _table(kind="support"):
    good, _ = norm({"id": "g", "images": [PNG], "messages": conv()})
    _, bad = norm({"id": "b", "messages": []})
    rows = [read_row(good, None, kind, "f", 0), read_row(None, bad, kind, "f", 1),
            read_row({**good, "id": "g"}, None, kind, "f2", 5)]
    return rows_to_table(rows, kind)


def test_split_quarantine_casts_exactly():
    valid, q = split_quarantine(_table(), "support", stage="index")
    assert valid.schema == SUPPORT_SCHEMA and valid.num_rows == 2
    assert q.schema == QUARANTINE_SCHEMA and q.num_rows == 1
    assert q.to_pylist()[0]["record_id"] == "b" and q.to_pylist()[0]["stage"] == "index"
    empty_v, empty_q = split_quarantine(_table().slice(0, 0), "support")
    assert empty_v.num_rows == 0 and empty_q.num_rows == 0


def test_mark_duplicates_in_table_keeps_the_chosen_occurrence():
    t = mark_duplicates_in_table(_table(), {"g": ("f", 0)})
    rows = {(r["_source"], r["_position"]): r for r in t.to_pylist()}
    assert rows[("f", 0)]["_error_reason"] is None
    assert reason_category(rows[("f2", 5)]["_error_reason"]) == "duplicate id"
    assert rows[("f2", 5)]["_error_field"] == "id" and "f:0" in rows[("f2", 5)]["_error_reason"]
    assert reason_category(rows[("src/file.jsonl", 7)]["_error_reason"]) == "empty conversation"  # untouched


def test_docs_list_every_reason_category():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "data.md").read_text()
    missing = [c for c in REASONS if f"| `{c}` |" not in doc]
    assert not missing, f"docs/data.md lacks reasons {missing}"
