"""`edray data inspect` and `edray config show data` through the real command line (typer)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
from typer.testing import CliRunner

from edray.cli import app
from edray.data.quarantine import reason_category
from tests.fixtures.data import BAD_CORPUS_LIMITS, support_records, write_llava

runner = CliRunner()


def limits_args() -> list[str]:
    out = []
    for k, v in BAD_CORPUS_LIMITS.items():
        out += ["--set", f"{k}={v}"]
    return out


def test_inspect_json_summary_and_quarantine_file(ray_session, bad_corpus, tmp_path):
    qfile = tmp_path / "q" / "quarantine.parquet"
    res = runner.invoke(app, ["data", "inspect", str(bad_corpus.jsonl), "--json", "--quarantine-out", str(qfile), *limits_args()])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["format"] == "jsonl" and summary["kind"] == "support"
    assert summary["valid"] == len(bad_corpus.valid_ids) + 1
    assert summary["quarantined"] == len(bad_corpus.planted)
    expected = {}
    for *_, category in bad_corpus.planted:
        expected[category] = expected.get(category, 0) + 1
    assert summary["by_reason"] == expected
    assert "messages: list<item: struct<role: string, content: string>> (required)" in summary["schema"]
    (row,) = summary["sample"]
    assert all(img.startswith("PNG 8x8, ") and img.endswith(" bytes") for img in row["images"])  # not the bytes
    table = pq.read_table(qfile)
    assert table.num_rows == len(bad_corpus.planted)
    assert {reason_category(r) for r in table["reason"].to_pylist()} == set(expected)


def test_inspect_tables_and_strict_exit_code(ray_session, bad_corpus):
    res = runner.invoke(app, ["data", "inspect", str(bad_corpus.jsonl), "--strict", *limits_args()])
    assert res.exit_code == 1
    assert "quarantined by reason" in res.output and "placeholder mismatch" in res.output
    assert "format jsonl" in res.output and "sample row" in res.output


def test_inspect_llava_eval_kind_and_format_flag(ray_session, tmp_path):
    recs = support_records(3)
    for r in recs:
        r["answer"] = "yes"
        r["messages"] = r["messages"][:1]
    path = write_llava(recs, tmp_path)
    res = runner.invoke(app, ["data", "inspect", str(path), "--kind", "eval", "--format", "llava", "--json", "--sample", "0"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.output)
    assert (s["format"], s["kind"], s["valid"], s["quarantined"], s["sample"]) == ("llava", "eval", 3, 0, [])
    assert "answer_type: string (required)" in s["schema"]


def test_inspect_errors_are_one_line_with_exit_2(tmp_path):
    res = runner.invoke(app, ["data", "inspect", str(tmp_path / "missing.jsonl")])
    assert res.exit_code == 2 and "missing.jsonl does not exist" in res.output
    (tmp_path / "x.csv").write_text("a,b\n")
    res = runner.invoke(app, ["data", "inspect", str(tmp_path / "x.csv")])
    assert res.exit_code == 2 and "--format" in res.output
    res = runner.invoke(app, ["data", "inspect", str(tmp_path / "x.csv"), "--set", "max_turns=0"])
    assert res.exit_code == 2 and "max_turns: 0" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["data", "inspect", str(tmp_path / "x.csv"), "--kind", "pool"])
    assert res.exit_code == 2 and "kind: 'pool'" in res.output


def test_help_and_config_show():
    res = runner.invoke(app, ["data", "inspect", "--help"])
    assert res.exit_code == 0 and "--quarantine-out" in res.output and "Lance" in res.output
    res = runner.invoke(app, ["config", "show", "data", "--set", "max_turns=9"])
    assert res.exit_code == 0 and "max_turns" in res.output and "9" in res.output
