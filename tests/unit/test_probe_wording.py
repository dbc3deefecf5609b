"""jobs/experiments/probe_wording.py on the untrained CI student: the error profile accounts for every wrong
answer, unknown words are counted, and the task's own sentence is restored after each probe."""

from __future__ import annotations

from pathlib import Path

import pytest

from edray.world.tasks import STEP_TRIGGER, TARGET_TASK_BY_NAME
from tests.fixtures.scripts import load_script

ROWS = 6


@pytest.fixture(scope="module")
def probe_wording():
    return load_script("jobs/experiments/probe_wording.py", "probe_wording")


def test_probe_accounts_for_every_error_and_restores_the_task(probe_wording, student_dir: Path) -> None:
    own = TARGET_TASK_BY_NAME["outnumber"].template
    out = probe_wording.probe(str(student_dir), "outnumber", ROWS, "Compare the {color_a} things with the {color_b} things: more, fewer or the same?")
    assert out["template"].endswith(STEP_TRIGGER)
    assert out["errors"] == round((1 - out["accuracy"]) * ROWS)
    assert sum(out["true_skills"].values()) == out["errors"]
    assert 0.0 <= out["well_formed"] <= 1.0 and out["mean_steps"] >= 0.0
    assert out["unk"] == 0
    assert TARGET_TASK_BY_NAME["outnumber"].template == own

    odd = probe_wording.probe(str(student_dir), "outnumber", 2, "Zorbulate the {color_a} things against the {color_b} quuxes.")
    assert odd["unk"] >= 2  # "Zorbulate" and "quuxes" are no words of the world
    assert TARGET_TASK_BY_NAME["outnumber"].template == own
