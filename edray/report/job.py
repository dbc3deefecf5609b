"""The HTML report of a run: one static, self-contained ``report.html`` (charts and images inline).

Inputs: a run directory (``runs/<run>/``) and whatever completed stages it holds —
``round_<k>/diagnose`` (gaps, errors), ``round_<k>/select`` (selection with provenance),
``round_<k>/train`` (``metrics.parquet``), ``round_<k>/evaluate`` (scores, predictions, summary) — plus
the validation set and the supporting pool named in those stages' manifests (for images and
instructions). Only folders with ``_SUCCESS`` are read; a missing stage leaves its section saying so.
Output: ``<out>/report.html`` (default ``<run-dir>/report/``), one folder to open or zip.

Run it with::

    edray report --run-dir runs/x [--out reports/x]
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from edray.report import core, plots
from edray.rundir import StageDir
from edray.schemas import (
    ERRORS,
    EVAL_SCORES,
    GAPS,
    IMAGE_PLACEHOLDER,
    REPORT_HTML,
    SCORE_ALL,
    SELECTION,
    TRAIN_METRICS,
)

log = logging.getLogger(__name__)

REPORT_DIR = "report"
_PRIMARY_ARMS = {"base", "lora", "full", "spider", "tuned"}


# --- reading the run directory -----------------------------------------------------------------------


def rounds(run_dir: Path) -> list[int]:
    """Round indexes present in the run directory, ascending."""
    out = []
    for p in run_dir.glob("round_*"):
        m = re.fullmatch(r"round_(\d+)", p.name)
        if m and p.is_dir():
            out.append(int(m.group(1)))
    return sorted(out)


def completed(run_dir: Path, stage: str, round_index: int | None) -> StageDir | None:
    """The stage folder when it holds a committed output, else ``None``."""
    sd = StageDir(run_dir, stage, round_index)
    return sd if sd.is_done() else None


def _read(sd: StageDir | None, name: str) -> list[dict[str, Any]] | None:
    if sd is None or not (sd.path / name).is_file():
        return None
    return pq.read_table(sd.path / name).to_pylist()


def _config_path(sd: StageDir | None, key: str) -> Path | None:
    if sd is None:
        return None
    value = sd.manifest().get("config", {}).get(key)
    if not value or "://" in str(value):
        return None
    p = Path(value)
    return p if p.exists() else None


def read_rows_by_id(path: Path | None, ids: Sequence[str], columns: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Rows of a Parquet file or folder whose ``id`` is in ``ids`` (only the asked columns)."""
    if path is None or not ids:
        return {}
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    try:
        dset = ds.dataset(str(path), format="parquet")
        cols = [c for c in columns if c in dset.schema.names]
        table = dset.to_table(filter=pc.field("id").isin(list(ids)), columns=cols)
    except (OSError, ValueError) as exc:  # an unreadable or non-Parquet source: images are left out
        log.warning("report: cannot read %s (%s); its images and instructions are left out", path, exc)
        return {}
    return {str(r["id"]): r for r in table.to_pylist()}


def _instruction(messages: Any) -> tuple[str | None, str | None]:
    """The first user turn (image placeholders removed) and the first assistant turn."""
    if not messages:
        return None, None
    user = next((m.get("content") for m in messages if m.get("role") == "user"), None)
    reply = next((m.get("content") for m in messages if m.get("role") == "assistant"), None)
    if user is not None:
        user = user.replace(IMAGE_PLACEHOLDER, "").strip()
    return user, reply


def _first_image(row: dict[str, Any] | None) -> bytes | None:
    imgs = (row or {}).get("images") or []
    return imgs[0] if imgs else None


# --- sections ------------------------------------------------------------------------------------------


def overview_section(run_dir: Path, ks: list[int], summary: list[dict[str, Any]] | None, eval_round: int | None) -> str:
    """Which stages completed per round, and the headline numbers."""
    stages = ("diagnose", "select", "train", "evaluate")
    index = "done" if completed(run_dir, "index", None) else "–"
    if ks:
        status = [["index (all rounds)", *([index] * len(ks))]]
        status += [[s, *("done" if completed(run_dir, s, k) else "–" for k in ks)] for s in stages]
        body = core.table(["stage", *(f"round {k}" for k in ks)], status)
    else:
        body = core.table(["stage", "status"], [["index", index]]) + core.missing("No rounds yet in this run directory.")
    if summary:
        body += f"<h3>Headline (round {eval_round})</h3>" + summary_table(summary)
        body += (
            "<p>retention = general accuracy ÷ the base model's general accuracy; combined = harmonic mean of "
            "target accuracy and retention. ± is one binomial standard error.</p>"
        )
    else:
        body += core.missing("No evaluation yet: run `edray evaluate` to see target gain and retention.")
    return body


def summary_table(summary: list[dict[str, Any]]) -> str:
    """The per-model headline table."""
    rows = [
        [
            s["model"], s["arm"], core.pct(s["target_accuracy"], s["target_stderr"]), core.signed_pts(s["target_gain"]),
            core.pct(s["general_accuracy"], s["general_stderr"]), core.ratio(s["retention"]), core.ratio(s["combined"]),
        ]
        for s in summary
    ]  # fmt: skip
    return core.table(["model", "arm", "target accuracy", "target gain", "general accuracy", "retention", "combined"], rows)


def gaps_section(run_dir: Path, ks: list[int]) -> str:
    """Capability gaps per round: a bar chart of errors per gap and the gaps' phrases."""
    parts = []
    for k in ks:
        gaps = _read(completed(run_dir, "diagnose", k), GAPS)
        if gaps is None:
            continue
        if not gaps:
            parts.append(f"<h3>Round {k}</h3>" + core.missing("The diagnosis found no capability gap (no wrong answers)."))
            continue
        rows = sorted(gaps, key=lambda g: (-int(g["error_count"]), str(g["skill"])))
        parts.append(
            f"<h3>Round {k}</h3>"
            + core.chart(plots.gap_bars(rows), f"capability gaps, round {k}")
            + core.table(
                ["gap", "skill", "errors", "phrases"],
                [[g["gap_id"], g["skill"], g["error_count"], "; ".join(g["phrases"][:6])] for g in rows],
            )
        )
    return "".join(parts) or core.missing("No diagnosis yet: run `edray diagnose` to find the capability gaps.")


def tasks_section(scores: list[dict[str, Any]] | None) -> str:
    """Target accuracy per task, base vs. every tuned model and baseline."""
    if not scores:
        return core.missing("No evaluation yet: run `edray evaluate` for before/after accuracy per task.")
    groups, models, acc = core.pivot_accuracy(scores, "target", "task")
    if not groups:
        return core.missing("The evaluation holds no target-task scores.")
    n = {s["task"]: int(s["n"]) for s in scores if s["suite"] == "target" and s["skill"] == SCORE_ALL and s["model"] == models[0][0]}
    return core.chart(plots.grouped_accuracy(groups, models, acc, "Target accuracy per task"), "target accuracy per task") + core.accuracy_matrix(groups, models, acc, n)


def skills_section(scores: list[dict[str, Any]] | None) -> str:
    """Accuracy per skill on the target split and on the general suite."""
    if not scores:
        return core.missing("No evaluation yet: run `edray evaluate` for before/after accuracy per skill.")
    parts = []
    for suite, title in (("target", "Target task, per skill"), ("general", "General suite, per skill (retention)")):
        groups, models, acc = core.pivot_accuracy(scores, suite, "skill")
        if not groups:
            parts.append(f"<h3>{core.esc(title)}</h3>" + core.missing(f"No per-skill scores on the {suite} suite (rows carry no skills)."))
            continue
        n = {s["skill"]: int(s["n"]) for s in scores if s["suite"] == suite and s["task"] == SCORE_ALL and s["model"] == models[0][0]}
        parts.append(
            f"<h3>{core.esc(title)}</h3>"
            + core.chart(plots.grouped_accuracy(groups, models, acc, title), title)
            + core.accuracy_matrix(groups, models, acc, n)
        )
    return "".join(parts)


def baselines_section(summary: list[dict[str, Any]] | None) -> str:
    """Baseline arms (random, INSTA, full data, validation...) beside the tuned students."""
    if not summary:
        return core.missing("No evaluation yet: run `edray evaluate` with baseline arms to compare them.")
    baselines = [s for s in summary if s["arm"] not in _PRIMARY_ARMS]
    body = ""
    if not baselines:
        body += core.missing(
            "No baseline arms evaluated yet: add models with arm random, insta, full_data or validation to the "
            "evaluate config (each trained on a selection of the same budget)."
        )
    ordered = sorted(summary, key=lambda s: (s["arm"] != "base", s["arm"] in _PRIMARY_ARMS, -(s["combined"] or 0.0)))
    return body + summary_table(ordered)


def arms_section(run_dir: Path) -> str:
    """The run's trials (``arms.parquet``): status, scores, where and how long each ran."""
    path = run_dir / "arms.parquet"
    if not path.is_file():
        return core.missing("No arms table: the run's arms have not run yet.")
    import pyarrow.parquet as pq

    rows = sorted(pq.read_table(path).to_pylist(), key=lambda r: (r["round"], r["arm"] != "base", r["arm"]))
    failed = [r for r in rows if r["status"] != "ok"]
    note = core.missing(f"{len(failed)} trial(s) failed: {', '.join(r['arm'] for r in failed)}.") if failed else ""
    body = core.table(
        ["round", "arm", "strategy", "budget", "seed", "update", "status", "target", "general", "train steps",
         "runner", "node", "wall (s)", "error"],
        [
            [r["round"], r["arm"], r["strategy"], r["budget"] if r["budget"] is not None else "–",
             r["seed"] if r["seed"] is not None else "–", r["update"] or "–", r["status"], core.pct(r["target_accuracy"]),
             core.pct(r["general_accuracy"]), r["train_steps"] if r["train_steps"] is not None else "–", r["runner"] or "–",
             (r["node_id"] or "")[:8], f"{r['wall_s']:.1f}" if r["wall_s"] is not None else "–", (r["error"] or "")[:200]]
            for r in rows
        ],
    )  # fmt: skip
    return note + body


def checks_section(run_dir: Path) -> str:
    """The skills world's checks of the run (``checks/checks.json``): why the method did or did not help."""
    path = run_dir / "checks" / "checks.json"
    if not path.is_file():
        return core.missing("No world checks: they run on skills-world runs (`edray world check --run-dir RUN`).")
    results = json.loads(path.read_text())
    passed = sum(r["status"] == "pass" for r in results)
    return f"<p>{passed} of {len(results)} checks passed.</p>" + core.table(
        ["check", "name", "status", "measured", "needs"],
        [[f"({r['check']})", r["name"], r["status"].upper(), r["explanation"], r["threshold"]] for r in results],
    )


def retention_section(summary: list[dict[str, Any]] | None) -> str:
    """Retention against target gain, one point per model."""
    if not summary:
        return core.missing("No evaluation yet: run `edray evaluate` to compare retention and gain of LoRA, full and SPIDER.")
    png = plots.retention_scatter(summary)
    if png is None:
        return core.missing("Retention or gain is undefined for every model (the base model scored 0 on a suite).")
    arms = {s["arm"] for s in summary}
    note = ""
    lacking = [a for a in ("lora", "full", "spider") if a not in arms]
    if lacking:
        note = core.missing(f"Not evaluated yet: {', '.join(lacking)}.")
    return core.chart(png, "retention vs target gain") + note


def training_section(run_dir: Path, ks: list[int]) -> str:
    """Training loss curves of every round's train stage."""
    curves: dict[str, list[tuple[int, float]]] = {}
    rows = []
    for k in ks:
        sd = completed(run_dir, "train", k)
        metrics = _read(sd, TRAIN_METRICS)
        if not metrics:
            continue
        mode = (sd.manifest().get("config") or {}).get("mode", "") if sd else ""
        label = f"round {k}" + (f" ({mode})" if mode else "")
        pts = [(int(m["step"]), float(m["loss"])) for m in metrics if m.get("loss") is not None]
        curves[label] = pts
        if pts:
            pts.sort()
            rows.append([label, len(pts), f"{pts[0][1]:.4f}", f"{pts[-1][1]:.4f}"])
    if not curves:
        return core.missing("No training yet: run `edray train` to see loss curves.")
    return core.chart(plots.loss_curves(curves), "training loss") + core.table(["run", "steps", "first loss", "last loss"], rows)


def error_views(run_dir: Path, k: int, max_errors: int, max_samples: int) -> list[core.ErrorView]:
    """The diagnosed errors of round ``k`` with their images and the samples retrieved for them."""
    dsd = completed(run_dir, "diagnose", k)
    errors = _read(dsd, ERRORS)
    if not errors:
        return []
    errors = sorted(errors, key=lambda e: str(e["error_id"]))[:max_errors]
    gaps = {g["gap_id"]: g["skill"] for g in (_read(dsd, GAPS) or [])}
    ssd = completed(run_dir, "select", k)
    selection = _read(ssd, SELECTION) or []
    wanted = {e["error_id"] for e in errors}
    by_error: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in selection:
        for eid in s["error_ids"] or []:
            if eid in wanted:
                by_error[eid].append(s)
    for eid, rows in by_error.items():
        rows.sort(key=lambda s: (s["rank"] if s["rank"] is not None else 1 << 30, -(s["score"] or 0.0), str(s["id"])))
        by_error[eid] = rows[:max_samples]
    validation_path = _config_path(dsd, "validation")
    pool_path = _config_path(completed(run_dir, "index", None), "pool")
    shown = [s for rows in by_error.values() for s in rows]
    val_ids = {e["id"] for e in errors} | {s["id"] for s in shown if s["source"] == "validation"}
    val_rows = read_rows_by_id(validation_path, sorted(val_ids), ["id", "images", "messages"])
    pool_rows = read_rows_by_id(pool_path, sorted({s["id"] for s in shown if s["source"] != "validation"}), ["id", "images", "messages", "skills"])
    views = []
    for e in errors:
        samples = []
        for s in by_error.get(e["error_id"], []):
            src = val_rows if s["source"] == "validation" else pool_rows
            row = src.get(str(s["id"]))
            instruction, answer = _instruction(row.get("messages") if row else None)
            samples.append(
                core.SampleView(
                    id=str(s["id"]), instruction=instruction, answer=answer, image=_first_image(row),
                    score=s["score"], rank=s["rank"], skill=s["skill"], strategy=s["strategy"], query=s["query"],
                )
            )  # fmt: skip
        views.append(
            core.ErrorView(
                error_id=str(e["error_id"]), round=int(e["round"]), task=str(e["source_task"]), question=str(e["question"]),
                gold=str(e["gold"]), prediction=str(e["prediction"]), steps=list(e["steps"] or []), step=e["step"],
                method=str(e["method"]), skill=e["skill"], gap=gaps.get(e["gap_id"]), image=_first_image(val_rows.get(str(e["id"]))),
                failure=e["failure"], samples=samples,
            )
        )  # fmt: skip
    return views


def errors_section(run_dir: Path, ks: list[int], max_errors: int, max_samples: int) -> str:
    """Browsable errors of every round (newest first)."""
    parts = []
    for k in reversed(ks):
        dsd = completed(run_dir, "diagnose", k)
        if dsd is None:
            continue
        total = dsd.manifest().get("counts", {}).get("errors")
        views = error_views(run_dir, k, max_errors, max_samples)
        head = f"<h3>Round {k}: {len(views)} of {total if total is not None else len(views)} errors shown</h3>"
        if not views:
            parts.append(head + core.missing("No wrong answers were diagnosed in this round."))
            continue
        if completed(run_dir, "select", k) is None:
            head += core.missing("No selection yet for this round: retrieved samples appear after `edray select`.")
        # Grouped by the teacher's missing skill, largest group first, so a gap's errors read together.
        groups: dict[str, list[core.ErrorView]] = defaultdict(list)
        for v in views:
            groups[v.gap or v.skill or "(no skill named)"].append(v)
        body, first = [], True
        for name, members in sorted(groups.items(), key=lambda g: (-len(g[1]), g[0])):
            body.append(f'<h4 class="group">{core.esc(name)} ({len(members)})</h4>')
            for v in members:
                body.append(core.render_error(v, expanded=first))
                first = False
        parts.append(head + "".join(body))
    return "".join(parts) or core.missing("No diagnosis yet: run `edray diagnose` to browse the student's errors.")


# --- the report ------------------------------------------------------------------------------------------


def build_report(run_dir: str | Path, max_errors: int = 200, max_samples: int = 5) -> str:
    """The report's HTML for a run directory.

    Args:
        run_dir: the run directory.
        max_errors: errors shown per round (by error id).
        max_samples: retrieved samples shown per error (best rank first).

    Returns:
        The HTML document.

    Raises:
        FileNotFoundError: ``run_dir`` is not a folder.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} does not exist")
    ks = rounds(run)
    eval_round = next((k for k in reversed(ks) if completed(run, "evaluate", k)), None)
    esd = completed(run, "evaluate", eval_round) if eval_round is not None else None
    scores = _read(esd, EVAL_SCORES)
    summary = esd.manifest().get("metrics", {}).get("summary") if esd else None
    sections = [
        ("overview", "Overview", overview_section(run, ks, summary, eval_round)),
        ("gaps", "Capability gaps", gaps_section(run, ks)),
        ("tasks", "Before / after per task", tasks_section(scores)),
        ("skills", "Before / after per skill", skills_section(scores)),
        ("baselines", "Baselines side by side", baselines_section(summary)),
        ("retention", "Retention vs. target gain", retention_section(summary)),
        ("arms", "Arms (trials)", arms_section(run)),
        ("checks", "World checks", checks_section(run)),
        ("training", "Training", training_section(run, ks)),
        ("errors", "Errors", errors_section(run, ks, max_errors, max_samples)),
    ]
    subtitle = f"run directory {run} · {len(ks)} round(s)" + (f" ({', '.join(f'round_{k}' for k in ks)})" if ks else "")
    return core.render_page(f"edray report: {run.resolve().name}", subtitle, sections)


def write_report(run_dir: str | Path, out: str | Path | None = None, max_errors: int = 200, max_samples: int = 5) -> Path:
    """Write ``report.html`` for a run directory (images and charts inline: one file to open or share).

    Args:
        run_dir: the run directory.
        out: output folder (default ``<run_dir>/report``).
        max_errors: errors shown per round.
        max_samples: retrieved samples shown per error.

    Returns:
        The path of ``report.html``.

    Raises:
        FileNotFoundError: ``run_dir`` is not a folder.
    """
    html = build_report(run_dir, max_errors, max_samples)
    folder = Path(out) if out is not None else Path(run_dir) / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / REPORT_HTML
    tmp = path.with_name(f".{REPORT_HTML}.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    log.info("report: %s (%d KiB)", path, len(html) // 1024)
    return path
