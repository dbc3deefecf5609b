"""The report's charts: matplotlib (Agg backend) figures rendered to PNG bytes in memory.

Each function takes plain rows and returns PNG bytes, or ``None`` when there is nothing to draw.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_ARM_COLORS = {
    "base": "#7f7f7f",
    "lora": "#1f77b4",
    "full": "#d62728",
    "spider": "#2ca02c",
}
_OTHER_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#ff7f0e"]


def arm_color(arm: str, others: list[str]) -> str:
    """A stable color per arm: fixed for base / lora / full / spider, cycled for baseline arms."""
    if arm in _ARM_COLORS:
        return _ARM_COLORS[arm]
    if arm not in others:
        others.append(arm)
    return _OTHER_COLORS[others.index(arm) % len(_OTHER_COLORS)]


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _short(text: str, n: int = 28) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def gap_bars(gaps: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Horizontal bars: errors per capability gap, largest on top.

    Args:
        gaps: rows with ``skill`` and ``error_count``.
    """
    if not gaps:
        return None
    rows = sorted(gaps, key=lambda g: (-int(g["error_count"]), str(g["skill"])))[:30]
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.35 * len(rows)))
    labels = [_short(str(g["skill"]), 48) for g in rows][::-1]
    ax.barh(labels, [int(g["error_count"]) for g in rows][::-1], color="#1f77b4")
    ax.set_xlabel("wrong answers attributed to the gap")
    ax.set_title("Capability gaps")
    return _png(fig)


def grouped_accuracy(
    groups: Sequence[str], models: Sequence[tuple[str, str]], acc: Mapping[tuple[str, str], tuple[float, float]], title: str
) -> bytes | None:
    """Grouped bars: accuracy (± 1 standard error) of each model per group (a task or a skill).

    Args:
        groups: x-axis groups, in order.
        models: ``(model, arm)`` pairs, in order.
        acc: ``(model, group)`` → ``(accuracy, stderr)``; missing pairs are left out.
        title: chart title.
    """
    if not groups or not models or not acc:
        return None
    others: list[str] = []
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) * max(1, len(models)) * 0.45 + 2), 3.8))
    for i, (model, arm) in enumerate(models):
        xs, ys, es = [], [], []
        for j, g in enumerate(groups):
            if (model, g) in acc:
                a, e = acc[(model, g)]
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(a)
                es.append(e)
        ax.bar(xs, ys, width, yerr=es, capsize=2, label=f"{model} ({arm})", color=arm_color(arm, others),
               alpha=0.55 if arm == "base" else 0.9)  # fmt: skip
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([_short(g, 22) for g in groups], rotation=20 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def retention_scatter(points: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Scatter: target gain (x) against general retention (y), one labelled point per model.

    Args:
        points: rows with ``model``, ``arm``, ``target_gain``, ``retention`` (``None`` rows skipped).
    """
    pts = [p for p in points if p.get("target_gain") is not None and p.get("retention") is not None]
    if not pts:
        return None
    others: list[str] = []
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    seen: set[str] = set()
    for p in pts:
        arm = str(p["arm"])
        ax.scatter(p["target_gain"], p["retention"], s=60, color=arm_color(arm, others),
                   label=arm if arm not in seen else None, edgecolor="black", linewidth=0.5)  # fmt: skip
        seen.add(arm)
        ax.annotate(_short(str(p["model"]), 20), (p["target_gain"], p["retention"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")  # fmt: skip
    ax.axhline(1.0, color="#999", linewidth=0.8, linestyle="--")
    ax.axvline(0.0, color="#999", linewidth=0.8, linestyle="--")
    ax.set_xlabel("target gain (accuracy − base accuracy)")
    ax.set_ylabel("general retention (× base)")
    ax.set_title("Retention vs. target gain (up and right is better)")
    ax.legend(fontsize=8, title="arm")
    return _png(fig)


def loss_curves(curves: Mapping[str, Sequence[tuple[int, float]]]) -> bytes | None:
    """Training loss against optimizer step, one line per training run.

    Args:
        curves: run label → ``(step, loss)`` pairs.
    """
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for label, pts in sorted(curves.items()):
        pts = sorted(pts)
        ax.plot([s for s, _ in pts], [v for _, v in pts], label=label, linewidth=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    ax.legend(fontsize=8)
    return _png(fig)
