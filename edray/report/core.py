"""Pure pieces of the HTML report: tables pivoted for charts, and HTML sections built from plain rows.

Every string that comes from data — questions, model outputs, skill phrases, file names — passes
through :func:`esc` (``html.escape``): model outputs are untrusted. Images are embedded only when
their bytes are a raster format recognized by magic number (PNG, JPEG, GIF, WebP), so an SVG or HTML
payload posing as an image is never inlined.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edray.schemas import SCORE_ALL

# --- escaping and small HTML pieces ------------------------------------------------------------------


def esc(value: Any) -> str:
    """``html.escape`` of ``str(value)`` (quotes included); ``None`` is empty."""
    return "" if value is None else html.escape(str(value), quote=True)


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def image_mime(data: bytes | None) -> str | None:
    """The MIME type of raster image bytes, by magic number; ``None`` for anything else."""
    if not data:
        return None
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_tag(data: bytes | None, alt: str, css: str = "thumb") -> str:
    """An ``<img>`` with the image inline as a base64 data URL; a note when the bytes are not a raster image."""
    mime = image_mime(data)
    if mime is None:
        return f'<span class="noimg">{esc("no image" if not data else "image not shown (unknown format)")}</span>'
    b64 = base64.b64encode(data).decode("ascii")  # type: ignore[arg-type]
    return f'<img class="{esc(css)}" alt="{esc(alt)}" src="data:{mime};base64,{b64}">'


def chart(png: bytes | None, alt: str) -> str:
    """A chart image, or nothing when there is no chart."""
    return image_tag(png, alt, css="chart") if png else ""


def missing(text: str) -> str:
    """The note shown in place of a section's content when its inputs are missing."""
    return f'<p class="missing">{esc(text)}</p>'


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], css: str = "") -> str:
    """A table; every cell is escaped (pre-rendered HTML is not accepted)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{esc(css)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def pct(x: float | None, se: float | None = None) -> str:
    """``63.5%`` or ``63.5 ± 2.1%``; ``–`` when unknown."""
    if x is None:
        return "–"
    return f"{100 * x:.1f} ± {100 * se:.1f}%" if se is not None else f"{100 * x:.1f}%"


def signed_pts(x: float | None) -> str:
    """A difference of accuracies in points: ``+4.0 pts``."""
    return "–" if x is None else f"{100 * x:+.1f} pts"


def ratio(x: float | None) -> str:
    """A ratio with three decimals, ``–`` when unknown."""
    return "–" if x is None else f"{x:.3f}"


def section(anchor: str, title: str, body: str) -> str:
    """A titled report section."""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


# --- pivots for the accuracy charts --------------------------------------------------------------------


def pivot_accuracy(
    scores: Sequence[Mapping[str, Any]], suite: str, by: str
) -> tuple[list[str], list[tuple[str, str]], dict[tuple[str, str], tuple[float, float]]]:
    """Accuracy per model and per task (``by="task"``) or per skill (``by="skill"``) of one suite.

    Args:
        scores: ``EVAL_SCORES_SCHEMA`` rows.
        suite: ``target`` or ``general``.
        by: ``task`` (rows with skill ``*``) or ``skill`` (rows with task ``*``).

    Returns:
        ``(groups, models, acc)``: sorted groups, ``(model, arm)`` pairs with the base arm first, and
        ``(model, group)`` → ``(accuracy, stderr)``.
    """
    other = "skill" if by == "task" else "task"
    acc: dict[tuple[str, str], tuple[float, float]] = {}
    groups: set[str] = set()
    models: dict[str, str] = {}
    for s in scores:
        if s["suite"] != suite or s[other] != SCORE_ALL or s[by] == SCORE_ALL:
            continue
        groups.add(s[by])
        models[s["model"]] = s["arm"]
        acc[(s["model"], s[by])] = (float(s["accuracy"]), float(s["stderr"]))
    ordered = sorted(models.items(), key=lambda m: (m[1] != "base", m[0]))
    return sorted(groups), ordered, acc


def accuracy_matrix(
    groups: Sequence[str], models: Sequence[tuple[str, str]], acc: Mapping[tuple[str, str], tuple[float, float]],
    n: Mapping[str, int] | None = None,
) -> str:
    """A table with one row per group and one column per model (accuracy ± stderr)."""
    headers = ["", *(f"{m} ({a})" for m, a in models)]
    rows = []
    for g in groups:
        label = f"{g} (n={n[g]})" if n and g in n else g
        rows.append([label, *(pct(*acc[(m, g)]) if (m, g) in acc else "–" for m, _ in models)])
    return table(headers, rows, css="matrix")


# --- the error browser -----------------------------------------------------------------------------------


@dataclass
class SampleView:
    """A retrieved supporting sample shown under the error it answered."""

    id: str
    instruction: str | None
    answer: str | None
    image: bytes | None
    score: float | None
    rank: int | None
    skill: str | None
    strategy: str | None
    query: str | None = None


@dataclass
class ErrorView:
    """One diagnosed wrong answer, ready to render."""

    error_id: str
    round: int
    task: str
    question: str
    gold: str
    prediction: str
    steps: list[str]
    step: int | None
    method: str
    skill: str | None
    gap: str | None
    image: bytes | None
    failure: str | None = None
    samples: list[SampleView] = field(default_factory=list)


def render_error(e: ErrorView, expanded: bool = False) -> str:
    """One error as a ``<details>`` block: image, question, steps (located step highlighted), skill, samples.

    Args:
        e: the error.
        expanded: render the block open.
    """
    steps = []
    for i, s in enumerate(e.steps, start=1):
        located = e.step is not None and i == e.step
        mark = ' class="located" title="first erroneous step (located)"' if located else ""
        steps.append(f"<li{mark}>{esc(s)}</li>")
    steps_html = f"<ol class=\"steps\">{''.join(steps)}</ol>" if steps else missing("The student wrote no steps.")
    where = f"step {e.step}" if e.step is not None else "no step"
    samples = []
    for s in e.samples:
        meta = " · ".join(
            x for x in (
                f"rank {s.rank}" if s.rank is not None else "",
                f"score {s.score:.3f}" if s.score is not None else "",
                s.strategy or "",
            ) if x
        )  # fmt: skip
        samples.append(
            '<div class="sample">'
            f"{image_tag(s.image, f'supporting sample {s.id}')}"
            f'<div><div class="meta">{esc(meta)}</div>'
            f'<div class="instr">{esc(s.instruction) if s.instruction is not None else "<i>sample not found in the pool</i>"}</div>'
            + (f'<div class="ans">→ {esc(s.answer)}</div>' if s.answer else "")
            + (f'<div class="meta">skill: {esc(s.skill)}</div>' if s.skill else "")
            + f'<div class="meta">id {esc(s.id)}</div></div></div>'
        )
    samples_html = "".join(samples) if samples else missing("No retrieved samples linked to this error.")
    failure = f'<p class="failure">{esc(e.failure)}</p>' if e.failure else ""
    return (
        f'<details class="error" data-skill="{esc(e.skill or "")}"{" open" if expanded else ""}>'
        f"<summary><b>{esc(e.task)}</b> · {esc(e.error_id)} · skill: <i>{esc(e.skill or '–')}</i> · {esc(where)}</summary>"
        '<div class="err-body">'
        f'<div class="err-img">{image_tag(e.image, f"image of {e.error_id}", css="big")}</div>'
        '<div class="err-text">'
        f'<p class="question">{esc(e.question)}</p>'
        f"<p>gold: <b>{esc(e.gold)}</b> · student: <b class=\"wrong\">{esc(e.prediction)}</b></p>"
        f"{steps_html}"
        f"<p>located by <code>{esc(e.method)}</code>; teacher's missing skill: <b>{esc(e.skill or '–')}</b>"
        + (f"; gap: {esc(e.gap)}" if e.gap else "")
        + f"</p>{failure}</div></div>"
        f'<h4>Retrieved samples ({len(e.samples)})</h4><div class="samples">{samples_html}</div>'
        "</details>"
    )


# --- the page -------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#243447;color:#fff;padding:14px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#cfd8e3;font-size:13px}
nav{padding:8px 28px;background:#e9eef3;font-size:14px}nav a{margin-right:14px;color:#243447}
main{padding:0 28px 40px;max-width:1200px}
section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:12px 18px;margin:18px 0}
h2{font-size:19px;margin:4px 0 10px;border-bottom:1px solid #eee;padding-bottom:6px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{border:1px solid #ddd;padding:4px 8px;text-align:left}
th{background:#f2f4f7}td{font-variant-numeric:tabular-nums}
img.chart{max-width:100%;display:block;margin:6px 0}
.missing{color:#8a6d3b;background:#fcf8e3;border:1px solid #faebcc;padding:8px 12px;border-radius:4px}
details.error{border:1px solid #ddd;border-radius:4px;margin:6px 0;padding:6px 10px;background:#fff}
details.error summary{cursor:pointer;font-size:14px}
.err-body{display:flex;gap:16px;margin-top:8px}.err-text{flex:1}
img.big{width:160px;height:160px;image-rendering:pixelated;border:1px solid #ccc}
img.thumb{width:72px;height:72px;image-rendering:pixelated;border:1px solid #ccc}
ol.steps li{margin:2px 0;padding:2px 4px}ol.steps li.located{background:#ffe0e0;border-left:4px solid #d62728;font-weight:600}
.wrong{color:#b00}.question{font-size:15px;white-space:pre-wrap}
.samples{display:flex;flex-wrap:wrap;gap:10px}.sample{display:flex;gap:8px;width:360px;border:1px solid #eee;padding:6px;border-radius:4px;font-size:12px}
.sample .instr{white-space:pre-wrap}.meta{color:#666;font-size:11px}.ans{color:#225}
.failure{color:#b00;font-size:12px}.noimg{color:#999;font-size:12px}
"""


def render_page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole HTML document.

    Args:
        title: page title.
        subtitle: a line under the title (run folder, rounds).
        sections: ``(anchor, title, body_html)`` in order; bodies are built by this module.
    """
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    body = "".join(section(a, t, b) for a, t, b in sections)
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # No scripts and no remote content: the report is a static document.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>"
        f"<nav>{nav}</nav><main>{body}</main></body></html>"
    )
