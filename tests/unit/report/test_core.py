"""The report's pure HTML pieces: escaping, image embedding, pivots, the error block."""

from __future__ import annotations

import base64
import io

from PIL import Image

from edray.report import core
from edray.schemas import SCORE_ALL

HOSTILE = '<script>alert("x")</script>'


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def test_esc_and_table_escape_everything():
    assert core.esc(HOSTILE) == "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
    assert core.esc(None) == ""
    html = core.table([HOSTILE], [[HOSTILE, 1]])
    assert "<script>" not in html and html.count("&lt;script&gt;") == 2


def test_only_raster_images_are_inlined():
    png = _png()
    tag = core.image_tag(png, "alt")
    assert 'src="data:image/png;base64,' in tag
    assert base64.b64encode(png).decode() in tag
    assert core.image_mime(b"\xff\xd8\xff\xe0rest") == "image/jpeg"
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"></svg>'
    assert core.image_mime(svg) is None
    assert "<svg" not in core.image_tag(svg, "x") and "unknown format" in core.image_tag(svg, "x")
    assert "no image" in core.image_tag(None, "x")


def test_pivot_accuracy_by_task_and_skill():
    scores = [
        {"model": "t", "arm": "lora", "suite": "target", "task": "a", "skill": SCORE_ALL, "n": 4, "accuracy": 0.75, "stderr": 0.2},
        {"model": "b", "arm": "base", "suite": "target", "task": "a", "skill": SCORE_ALL, "n": 4, "accuracy": 0.25, "stderr": 0.2},
        {"model": "b", "arm": "base", "suite": "target", "task": SCORE_ALL, "skill": SCORE_ALL, "n": 4, "accuracy": 0.25, "stderr": 0.2},
        {"model": "b", "arm": "base", "suite": "target", "task": SCORE_ALL, "skill": "s", "n": 2, "accuracy": 0.5, "stderr": 0.35},
        {"model": "b", "arm": "base", "suite": "general", "task": "a", "skill": SCORE_ALL, "n": 9, "accuracy": 1.0, "stderr": 0.0},
    ]
    groups, models, acc = core.pivot_accuracy(scores, "target", "task")
    assert groups == ["a"] and models == [("b", "base"), ("t", "lora")]
    assert acc == {("t", "a"): (0.75, 0.2), ("b", "a"): (0.25, 0.2)}
    groups, models, acc = core.pivot_accuracy(scores, "target", "skill")
    assert groups == ["s"] and acc == {("b", "s"): (0.5, 0.35)}


def test_render_error_highlights_located_step_and_escapes():
    view = core.ErrorView(
        error_id="r0:1", round=0, task="spot", question=f"Q {HOSTILE}", gold="yes", prediction=HOSTILE,
        steps=["first", f"second {HOSTILE}", "third"], step=2, method="answer_switch", skill=HOSTILE, gap=None,
        image=_png(),
        samples=[core.SampleView(id="p1", instruction=HOSTILE, answer="no", image=None, score=0.5, rank=1, skill="s", strategy="error_driven")],
    )
    html = core.render_error(view, expanded=True)
    assert "<script>" not in html
    assert '<li class="located" title="first erroneous step (located)">second &lt;script&gt;' in html
    assert html.count('class="located"') == 1
    assert "rank 1 · score 0.500" in html and "<details" in html and " open>" in html


def test_render_page_has_sections_and_no_remote_content():
    page = core.render_page(f"t {HOSTILE}", "sub", [("a", "Alpha", core.missing("nothing yet"))])
    assert page.startswith("<!DOCTYPE html>")
    assert "<script>" not in page and 'id="a"' in page and "nothing yet" in page
    assert "default-src 'none'" in page
