"""The failure budget's decision and message."""

from __future__ import annotations

import pytest

from edray.budget import FailureBudgetExceeded, check_failure_budget, reason_kind


def test_under_or_at_the_budget_passes() -> None:
    check_failure_budget("diagnose", "errors", 10, [("a", "x")], 0.1, "fix it")
    check_failure_budget("diagnose", "errors", 0, [], 0.1, "fix it")
    check_failure_budget("diagnose", "errors", 2, [("a", "x"), ("b", "y")], 1.0, "fix it")


def test_over_the_budget_names_share_reasons_and_advice() -> None:
    failures = [(f"e{i}", f"locate prefix {i}: no option probabilities in reply 'Step {i}'") for i in range(3)]
    failures.append(("e9", "skill: HTTP 503: overloaded (after 5 attempts)"))
    with pytest.raises(FailureBudgetExceeded) as info:
        check_failure_budget("diagnose", "errors", 10, failures, 0.1, "set locate.probabilities=choice")
    err = info.value
    assert (err.failed, err.total, err.share) == (4, 10, 0.4)
    text = str(err)
    assert "4 of 10 errors (40%)" in text and "budget of 10%" in text and "set locate.probabilities=choice" in text
    # The three alike reasons are grouped, commonest first, with an example row.
    assert err.reasons[0][1] == 3 and err.reasons[0][2] == "e0" and err.reasons[1][1] == 1
    assert text.index("3 x") < text.index("1 x")


def test_reason_kind_blanks_particulars() -> None:
    assert reason_kind("prefix 2: reply 'Step'") == reason_kind("prefix 7: reply 'The answer'")
