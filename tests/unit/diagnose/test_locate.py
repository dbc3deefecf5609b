"""The answer-switch rule and its comparison locators against hand-computed sequences."""

from __future__ import annotations

import math

import pytest

from edray.diagnose.locate import (
    Located,
    build_options,
    locate_answer_switch,
    locate_first_rejected,
    locate_random,
    option_probs,
    parse_verdict,
    switch_margins,
    token_letter,
)


def lp(p: float) -> float:
    return math.log(p)


class TestAnswerSwitch:
    def test_first_step_above_delta(self) -> None:
        # margins: prior, after step 1, 2, 3
        assert locate_answer_switch([-0.4, -0.2, 0.3, 0.5], delta=0.1, consecutive=1) == Located(2, "answer_switch")

    def test_strictly_greater_than_delta(self) -> None:
        # 0.1 is not > 0.1: step 2 does not qualify, step 3 does.
        assert locate_answer_switch([-0.4, 0.0, 0.1, 0.2], delta=0.1, consecutive=1).step == 3

    def test_must_stay_for_lambda_steps(self) -> None:
        # Step 1 jumps above δ but falls back at step 2; steps 3-4 stay above: λ=2 picks step 3.
        margins = [-0.5, 0.3, -0.1, 0.4, 0.6]
        assert locate_answer_switch(margins, delta=0.0, consecutive=2) == Located(3, "answer_switch")
        assert locate_answer_switch(margins, delta=0.0, consecutive=1) == Located(1, "answer_switch")

    def test_run_reaching_last_step(self) -> None:
        margins = [-0.5, -0.3, -0.2, 0.4]  # only the last step is above δ
        assert locate_answer_switch(margins, 0.0, consecutive=3, run_may_end=True) == Located(3, "answer_switch")
        located = locate_answer_switch(margins, 0.0, consecutive=3, run_may_end=False, fallback="last_step")
        assert located == Located(3, "fallback_last_step")

    def test_lambda_longer_than_steps_without_run_end(self) -> None:
        margins = [-0.5, 0.4, 0.5]
        assert locate_answer_switch(margins, 0.0, consecutive=3, run_may_end=False, fallback="first_step") == Located(
            1, "fallback_first_step"
        )
        assert locate_answer_switch(margins, 0.0, consecutive=3, run_may_end=True) == Located(1, "answer_switch")

    def test_fallback_largest_increase(self) -> None:
        # Never above δ=0.5; increases: +0.1, +0.35, +0.05 -> step 2.
        margins = [-0.6, -0.5, -0.15, -0.1]
        assert locate_answer_switch(margins, delta=0.5, consecutive=1) == Located(2, "fallback_largest_increase")

    def test_fallback_largest_increase_tie_takes_earliest(self) -> None:
        margins = [0.0, 0.1, 0.2, 0.2]
        assert locate_answer_switch(margins, delta=0.9, consecutive=1).step == 1

    def test_negative_delta(self) -> None:
        # δ < 0 lets a step qualify while the gold is still slightly ahead.
        assert locate_answer_switch([-0.5, -0.3, -0.05], delta=-0.1, consecutive=1).step == 2

    def test_prior_margin_ignored_for_qualifying(self) -> None:
        # The prefix without steps is above δ, but it is not a step.
        assert locate_answer_switch([0.5, 0.5, 0.5], delta=0.0, consecutive=1).step == 1

    def test_no_steps(self) -> None:
        assert locate_answer_switch([0.2], 0.0, 1) == Located(None, "no_steps")

    def test_bad_arguments(self) -> None:
        with pytest.raises(ValueError):
            locate_answer_switch([0, 1], 0.0, consecutive=0)
        with pytest.raises(ValueError):
            locate_answer_switch([0, 1], 0.0, consecutive=1, fallback="middle")


class TestOptions:
    def test_multiple_choice_by_letter_and_text(self) -> None:
        opts = build_options("B", "red", "multiple_choice", ["red", "blue", "green"], key="x")
        assert (opts.gold, opts.wrong, opts.open_ended) == (1, 0, False)
        assert opts.letters == ("A", "B", "C")

    def test_multiple_choice_unreadable_student_answer(self) -> None:
        opts = build_options("blue", "I am not sure", "multiple_choice", ["red", "blue"], key="x")
        assert opts.wrong is None
        # P(wrong) is then the mass of every non-gold option.
        assert switch_margins([[0.3, 0.7], [0.8, 0.2]], opts) == pytest.approx([-0.4, 0.6])

    def test_multiple_choice_gold_must_name_an_option(self) -> None:
        with pytest.raises(ValueError, match="names none"):
            build_options("purple", "red", "multiple_choice", ["red", "blue"], key="x")

    def test_open_ended_becomes_two_options(self) -> None:
        opts = build_options("3", "5", "number", None, key="sample-1")
        assert opts.open_ended and len(opts.texts) == 2
        assert opts.texts[opts.gold] == "3" and opts.texts[opts.wrong] == "5"
        assert {opts.gold, opts.wrong} == {0, 1}

    def test_open_ended_order_varies_with_key(self) -> None:
        golds = {build_options("yes", "no", "yes_no", None, key=f"k{i}").gold for i in range(40)}
        assert golds == {0, 1}

    def test_open_ended_empty_student_answer(self) -> None:
        opts = build_options("cat", "", "open", None, key="k")
        assert opts.texts[opts.wrong] == "(no answer)"

    def test_margins_with_named_wrong_option(self) -> None:
        opts = build_options("A", "C", "multiple_choice", ["x", "y", "z"], key="k")
        assert switch_margins([[0.6, 0.3, 0.1], [0.2, 0.1, 0.7]], opts) == pytest.approx([-0.5, 0.5])


class TestOptionProbs:
    def test_renormalized_over_options(self) -> None:
        tokens = [("B", lp(0.5), [("B", lp(0.5)), ("A", lp(0.3)), ("The", lp(0.2))])]
        assert option_probs(tokens, ["A", "B"]) == pytest.approx([0.375, 0.625])

    def test_spellings_of_one_letter_are_summed(self) -> None:
        tokens = [(" A", lp(0.4), [(" A", lp(0.4)), ("A", lp(0.2)), ("(B", lp(0.2)), ("C", lp(0.2))])]
        assert option_probs(tokens, ["A", "B"]) == pytest.approx([0.75, 0.25])

    def test_answer_position_is_first_letter_token(self) -> None:
        tokens = [
            ("Option", lp(0.9), [("Option", lp(0.9)), ("A", lp(0.05))]),
            (" C", lp(0.6), [(" C", lp(0.6)), (" A", lp(0.4))]),
        ]
        assert option_probs(tokens, ["A", "B", "C"]) == pytest.approx([0.4, 0.0, 0.6])

    def test_missing_letters_get_zero(self) -> None:
        assert option_probs([("A", 0.0, [("A", 0.0)])], ["A", "B"]) == pytest.approx([1.0, 0.0])

    def test_no_letter_is_none(self) -> None:
        assert option_probs([("I", lp(0.5), [("I", lp(0.5))]), ("think", -1.0, [])], ["A", "B"]) is None
        assert option_probs([], ["A", "B"]) is None

    def test_letter_outside_options_is_not_an_answer(self) -> None:
        tokens = [("D", lp(0.9), [("D", lp(0.9))]), ("B", lp(0.5), [("B", lp(0.5)), ("A", lp(0.5))])]
        assert option_probs(tokens, ["A", "B"]) == pytest.approx([0.5, 0.5])

    def test_token_letter(self) -> None:
        assert [token_letter(t) for t in [" B", "(C)", "A.", "a", "AB", "**D**"]] == ["B", "C", "A", None, None, "D"]


class TestComparisonLocators:
    def test_random_is_deterministic_and_in_range(self) -> None:
        picks = [locate_random(5, key=f"e{i}", seed=3) for i in range(50)]
        assert all(p.method == "random" and 1 <= p.step <= 5 for p in picks)
        assert picks == [locate_random(5, key=f"e{i}", seed=3) for i in range(50)]
        assert len({p.step for p in picks}) > 1
        assert locate_random(0, key="e") == Located(None, "no_steps")

    def test_first_rejected(self) -> None:
        assert locate_first_rejected([True, None, False, False]) == Located(3, "ask_per_step")
        assert locate_first_rejected([True, True]) == Located(2, "fallback_last_step")
        assert locate_first_rejected([True, True], fallback="first_step") == Located(1, "fallback_first_step")
        assert locate_first_rejected([]) == Located(None, "no_steps")

    def test_parse_verdict(self) -> None:
        assert parse_verdict("Yes, it is.") is True
        assert parse_verdict("no") is False
        assert parse_verdict("Incorrect: the colour is wrong") is False
        assert parse_verdict("maybe") is None
        assert parse_verdict("") is None


class TestOptionPaths:
    def test_free_reply_reads_letters_among_the_alternatives(self) -> None:
        # SmolLM2 answers "Step" or "The" first; the letters are still among the alternatives.
        tokens = [("The", lp(0.5), [("The", lp(0.5)), ("B", lp(0.3)), ("A", lp(0.1))]), (" answer", -0.1, [])]
        assert option_probs(tokens, ["A", "B"]) == pytest.approx([0.25, 0.75])

    def test_likelihood_softmaxes_the_option_tokens_after_the_common_prefix(self) -> None:
        from edray.diagnose.locate import likelihood_probs

        prefix = [("1", None), ("7", -0.2), ("9", -0.1)]
        scored = [prefix + [("49", math.log(0.2))], prefix + [("50", math.log(0.6))]]
        assert likelihood_probs(scored) == pytest.approx([0.25, 0.75])
        # Multi-token options sum their tokens.
        scored = [prefix + [("4", math.log(0.5)), ("9", math.log(0.5))], prefix + [("5", math.log(0.5))]]
        assert likelihood_probs(scored) == pytest.approx([1 / 3, 2 / 3])
        assert likelihood_probs([prefix, prefix]) is None  # nothing of their own
        assert likelihood_probs([prefix + [("4", None)], prefix + [("5", -1.0)]]) is None
