"""The failure budget of a stage that calls models: stop loudly when too many calls fail.

A stage whose model calls fail, or come back unusable, for more than a configured share of its rows
raises :class:`FailureBudgetExceeded` instead of committing a thin result that looks like success. The
message gives the share, the commonest reasons with an example row each, and what to change. The stage
keeps what succeeded (the response cache, the committed rows), so a re-run pays only for the rest.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence


class FailureBudgetExceeded(RuntimeError):
    """More than the allowed share of a stage's rows failed.

    Attributes:
        what: the rows counted (``teacher calls of 59 errors``...).
        failed: how many failed.
        total: how many were tried.
        reasons: ``(reason kind, count, example row id, example reason)``, commonest first.
    """

    def __init__(self, message: str, what: str, failed: int, total: int, reasons: list[tuple[str, int, str, str]]) -> None:
        super().__init__(message)
        self.what = what
        self.failed = failed
        self.total = total
        self.reasons = reasons

    @property
    def share(self) -> float:
        return self.failed / self.total if self.total else 0.0


def reason_kind(reason: str) -> str:
    """A reason with its particulars (quoted replies, numbers) blanked, so that alike failures group together."""
    kind = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", reason)
    return re.sub(r"\d+(?:\.\d+)?", "N", kind)[:160]


def check_failure_budget(
    stage: str, what: str, total: int, failures: Sequence[tuple[str, str]], max_share: float, advice: str, top: int = 3
) -> None:
    """Raise when ``len(failures) / total`` exceeds ``max_share``.

    Args:
        stage: the stage's name, for the message.
        what: what the rows are (``"errors"``, ``"pool rows sent to the teacher"``).
        total: rows tried.
        failures: ``(row id, reason)`` of every failed row.
        max_share: the allowed share (1 never raises).
        advice: what to change, in a sentence or two.
        top: how many reason kinds to list.

    Raises:
        FailureBudgetExceeded: the share is over the budget.
    """
    if total <= 0 or len(failures) / total <= max_share:
        return
    kinds = Counter(reason_kind(r) for _, r in failures)
    example: dict[str, tuple[str, str]] = {}
    for rid, r in failures:
        example.setdefault(reason_kind(r), (rid, r))
    reasons = [(k, n, *example[k]) for k, n in kinds.most_common(top)]
    lines = [
        f"{stage}: {len(failures)} of {total} {what} ({len(failures) / total:.0%}) failed or came back unusable, "
        f"over the failure budget of {max_share:.0%}. Commonest reasons:"
    ]
    for _, n, rid, r in reasons:
        lines.append(f"  - {n} x {r[:240]}  (e.g. {rid})")
    lines.append(f"What to change: {advice}")
    lines.append("What succeeded is kept: a re-run pays only for the failed rows.")
    raise FailureBudgetExceeded("\n".join(lines), what, len(failures), total, reasons)
