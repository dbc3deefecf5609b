"""Answer scorers."""

from __future__ import annotations

import pytest

from edray.diagnose.scoring import (
    choice_index,
    normalize_text,
    parse_number,
    score_answer,
    score_choice,
    score_contains,
    score_numeric,
    score_vqa_soft,
)

SCORERS = {"multiple_choice": "choice", "yes_no": "exact", "number": "numeric", "open": "exact"}


def test_normalize_text() -> None:
    assert normalize_text("  The Red,  square! ") == "red square"
    assert normalize_text("Three cats.") == "3 cats"
    assert normalize_text("3.5 units") == "3.5 units"
    assert normalize_text(None) == ""


@pytest.mark.parametrize(
    "text,expected",
    [("B", 1), ("(b)", 1), ("B.", 1), ("C) green", 2), ("option A", 0), ("The answer is (C)", 2), ("blue", 1),
     ("it is green", 2), ("E", None), ("", None), ("red or blue", None)],
)
def test_choice_index(text: str, expected: int | None) -> None:
    assert choice_index(text, ["red", "blue", "green"]) == expected


def test_choice_option_text_starting_with_a_letter() -> None:
    # "A cat" is the text of option B, not the letter A.
    assert choice_index("a cat", ["a dog", "A cat"]) == 1


def test_score_choice_gold_as_letter_or_text() -> None:
    choices = ["red", "blue"]
    assert score_choice("B", "blue", choices) == 1.0
    assert score_choice("blue", "B", choices) == 1.0
    assert score_choice("A", "B", choices) == 0.0
    assert score_choice("", "B", choices) == 0.0


def test_numeric() -> None:
    assert parse_number("There are three objects") == 3.0
    assert parse_number("1,234 items") == 1234.0
    assert parse_number("no number") is None
    assert score_numeric("3", "3.0") == 1.0
    assert score_numeric("3.04", "3", abs_tol=0.05) == 1.0
    assert score_numeric("3.2", "3", abs_tol=0.05) == 0.0
    assert score_numeric("105", "100", rel_tol=0.1) == 1.0


def test_vqa_soft_and_contains() -> None:
    assert score_vqa_soft("red", '["red", "red", "dark red", "red"]') == 1.0
    assert score_vqa_soft("dark red", '["red", "red", "dark red", "red"]') == pytest.approx(1 / 3)
    assert score_vqa_soft("Red.", "red") == 1.0
    assert score_vqa_soft("blue", "red|crimson") == 0.0
    assert score_contains("it is a red square", "red square") == 1.0
    assert score_contains("it is a reddish square", "red") == 0.0


def test_score_answer_dispatch() -> None:
    assert score_answer("Yes, there is.", "yes", "yes_no", None, SCORERS) == 1.0
    assert score_answer("no", "yes", "yes_no", None, SCORERS) == 0.0
    assert score_answer("two", "2", "number", None, SCORERS) == 1.0
    assert score_answer("(A)", "red", "multiple_choice", ["red", "blue"], SCORERS) == 1.0
    assert score_answer("A circle", "circle", "open", None, SCORERS) == 1.0
    with pytest.raises(ValueError, match="unknown scorer"):
        score_answer("a", "a", "open", None, {"open": "fuzzy"})
