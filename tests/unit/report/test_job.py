"""The report from small run directories: complete, partial and empty."""

from __future__ import annotations

import re

from edray.report.job import build_report, write_report
from tests.fixtures.evaluate import HOSTILE, build_report_run


def _section(html: str, anchor: str) -> str:
    m = re.search(rf'<section id="{anchor}">(.*?)</section>', html, re.S)
    assert m, anchor
    return m.group(1)


def test_complete_run_has_every_section(report_run_dir):
    path = write_report(report_run_dir)
    html = path.read_text(encoding="utf-8")
    assert path.name == "report.html" and path.parent.name == "report"
    for anchor in ("overview", "gaps", "tasks", "skills", "baselines", "retention", "training", "errors"):
        assert 'class="missing"' not in _section(html, anchor) or anchor == "retention", anchor
    assert HOSTILE not in html  # model output and skills are shown escaped
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    errors = _section(html, "errors")
    assert errors.count("<details") == 3 and errors.count('class="located"') == 3
    assert errors.count('src="data:image/png;base64,') >= 3 + 4  # error images + retrieved samples
    assert "random-r0" in _section(html, "baselines")
    assert _section(html, "gaps").count('src="data:image/png') == 1


def test_partial_run_says_what_is_missing(tmp_path):
    run = build_report_run(tmp_path, with_evaluate=False)
    html = build_report(run)
    for anchor in ("tasks", "skills", "baselines", "retention"):
        assert "run `edray evaluate`" in _section(html, anchor), anchor
    assert 'class="missing"' not in _section(html, "training")


def test_run_without_baselines(tmp_path):
    html = build_report(build_report_run(tmp_path, with_baselines=False))
    assert "No baseline arms evaluated yet" in _section(html, "baselines")


def test_empty_run_directory(tmp_path):
    html = build_report(tmp_path)
    assert "No rounds yet" in html and "No diagnosis yet" in _section(html, "errors")
    assert "No training yet" in _section(html, "training")
