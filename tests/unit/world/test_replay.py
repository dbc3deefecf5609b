"""The replay student's planted errors: one false step of the chosen skills, found by the ground truth."""

from __future__ import annotations

import asyncio

from edray.serve.engine import ChatRequest
from edray.world.pool import generate_eval_rows, true_error_skill, true_error_step
from edray.world.replay import ReplayStudent, corrupted_reply, planted_replies
from edray.world.skills import parse_step, split_steps


def test_planted_step_is_the_true_error_step_of_the_chosen_skill() -> None:
    rows = generate_eval_rows("corner", "validation", 20, seed=2).to_pylist()
    for row in rows:
        made = corrupted_reply(row, seed=0, only_skills={"horizontal_position"})
        assert made is not None
        text, k = made
        steps, _ = split_steps(text)
        assert true_error_step(row, text) == k
        assert true_error_skill(row, text) == "horizontal_position" == parse_step(steps[k - 1]).skill
    # A skill no step of the task uses: nothing to plant.
    assert corrupted_reply(rows[0], seed=0, only_skills={"count_comparison"}) is None


def test_replay_student_answers_each_planted_question() -> None:
    rows = generate_eval_rows("spot_item", "validation", 6, seed=2).to_pylist()
    replies, planted = planted_replies(rows, seed=0)
    assert set(planted) == {r["id"] for r in rows} and len(replies) == len(rows)
    row = rows[0]
    user = row["messages"][0]["content"]
    got = asyncio.run(ReplayStudent(replies).generate(ChatRequest(model="s", messages=[{"role": "user", "content": user}], images=row["images"])))
    assert true_error_step(row, got.text) == planted[row["id"]]
