"""The annotation prompt and the skill-phrase extractor shared by index and diagnose."""

from __future__ import annotations

import pytest

from edray.index.prompts import ANNOTATION_QUESTION, annotation_messages, parse_annotation, short_phrase


def test_annotation_messages_are_configurable() -> None:
    msgs = annotation_messages("<image>Is there a red square?", "yes")
    assert msgs[1]["content"] == f"Instruction: Is there a red square?\nAnswer: yes\n{ANNOTATION_QUESTION}"
    custom = annotation_messages("q", "a", system="S", question="Name the skill.")
    assert custom[0]["content"] == "S" and custom[1]["content"].endswith("Name the skill.")


@pytest.mark.parametrize(
    "reply,phrase",
    [
        ("counting objects", "counting objects"),
        ("Skill: Counting objects.", "counting objects"),
        ("- spatial relations", "spatial relations"),
        ("The student is missing the skill of identifying colours.", "identifying colours"),
        ("The student lacks spatial reasoning because he reads left as right.", "spatial reasoning"),
        ("The skill exercised is counting objects", "counting objects"),
        ("judging how big an object is", "judging how big an object is"),  # a world phrase, kept whole
        ("identifying the color of the object in the", "identifying the color of the object"),
        # Sentences about the student, hedges, questions and bare words are no phrase.
        ("The student answered wrong because he cannot count.", None),
        ("He failed to see the square", None),
        ("I am not sure.", None),
        ("What is the colour?", None),
        ("Step", None),
        ("", None),
    ],
)
def test_short_phrase(reply: str, phrase: str | None) -> None:
    assert short_phrase(reply, 8) == phrase


def test_parse_annotation_keeps_distinct_short_phrases() -> None:
    assert parse_annotation('{"skills": ["Counting", "counting", "Shape recognition"]}', 3) == ["counting", "shape recognition"]
    assert parse_annotation("colour recognition; the student answered; counting objects", 3) == [
        "colour recognition", "counting objects"
    ]
    # JSON cut off by the token budget keeps its complete items.
    assert parse_annotation('{"skills": ["counting objects", "shape recog', 3) == ["counting objects"]
    with pytest.raises(ValueError, match="no skill phrase"):
        parse_annotation("The student answered wrong.", 3)
