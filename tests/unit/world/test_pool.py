"""Pool and evaluation rows: schemas, determinism, the mix, disjoint splits, ground-truth functions."""

from __future__ import annotations

import json

import pytest

from edray.schemas import EVAL_SCHEMA, SUPPORT_SCHEMA
from edray.world.config import SceneConfig
from edray.world.pool import (
    generate_eval_rows,
    generate_support_rows,
    skill_shares,
    split_of_scene,
    task_weights,
    true_error_step,
    true_error_skill,
    true_skills,
)
from edray.world.scene import Scene, scene_from_png
from edray.world.tasks import TARGET_TASKS


def test_support_rows_schema_and_null_skills() -> None:
    t = generate_support_rows(0, 0, 100)
    assert t.schema.equals(SUPPORT_SCHEMA)
    assert t.num_rows == 100 and t.column("skills").null_count == 100
    assert len(set(t.column("id").to_pylist())) == 100
    for row in t.to_pylist()[:50]:
        world = json.loads(row["metadata"])["world"]
        assert scene_from_png(row["images"][0]) == Scene.from_dict(world["scene"])
        assert row["messages"][0]["content"].startswith("<image>\n")
        assert true_skills(row) == world["skills"]


def test_support_rows_are_byte_identical_and_slice_independent() -> None:
    a = generate_support_rows(5, 100, 300)
    b = generate_support_rows(5, 100, 300)
    assert a.equals(b)
    assert a.slice(150, 50).equals(generate_support_rows(5, 250, 50))
    assert not a.equals(generate_support_rows(6, 100, 300))


def test_mix_under_represents_a_skill() -> None:
    shares = skill_shares({"attribute_binding": 0.03})
    assert shares["attribute_binding"] <= 0.005
    assert skill_shares()["attribute_binding"] > 0.05
    t = generate_support_rows(0, 0, 1500, mix={"attribute_binding": 0.03})
    n = sum("attribute_binding" in true_skills(r) for r in t.select(["id", "metadata"]).to_pylist())
    assert n <= 0.005 * 1500 + 6  # expected ~6


def test_mix_by_task_name_and_bad_keys() -> None:
    w = task_weights({"binding_1": 0.0})
    assert min(w) == 0.0 and abs(sum(w) - 1) < 1e-9
    with pytest.raises(ValueError, match="unknown"):
        task_weights({"juggling": 1.0})
    with pytest.raises(ValueError, match="negative"):
        task_weights({"attribute_binding": -1.0})


@pytest.mark.parametrize("task", [t.name for t in TARGET_TASKS] + ["general"])
def test_eval_splits_are_disjoint_deterministic_and_well_formed(task: str) -> None:
    val = generate_eval_rows(task, "validation", 60, seed=1)
    test = generate_eval_rows(task, "test", 60, seed=1)
    assert val.schema.equals(EVAL_SCHEMA)
    assert val.equals(generate_eval_rows(task, "validation", 60, seed=1))
    digests = {}
    for split, table in (("validation", val), ("test", test)):
        digests[split] = set()
        for row in table.to_pylist():
            world = json.loads(row["metadata"])["world"]
            scene = Scene.from_dict(world["scene"])
            assert split_of_scene(scene) == split == row["split"]
            digests[split].add(scene.digest())
            assert row["answer_type"] in ("multiple_choice", "yes_no", "number", "open")
            if row["answer_type"] == "multiple_choice":
                assert row["choices"][ord(row["answer"]) - 65] == world["answer_value"]
            assert true_error_step(row, row["messages"][1]["content"]) is None
    assert not digests["validation"] & digests["test"]


def test_eval_row_validation() -> None:
    with pytest.raises(ValueError, match="split"):
        generate_eval_rows("corner", "train", 1, 0)
    with pytest.raises(ValueError, match="unknown task"):
        generate_eval_rows("nope", "test", 1, 0)


def test_true_error_step_finds_the_first_contradiction() -> None:
    row = generate_eval_rows("locate_item", "validation", 1, seed=3, form="open").to_pylist()[0]
    gold = json.loads(row["metadata"])["world"]["steps"]
    side = "left" if "right" in gold[1] else "right"
    wrong = gold[1].replace("left", side) if "left" in gold[1] else gold[1].replace("right", side)
    assert true_error_step(row, gold) is None
    assert true_error_step(row, [gold[0], wrong]) == 2
    assert true_error_skill(row, [gold[0], wrong]) == "horizontal_position"
    assert true_error_step(row, f"Step 1: I think so.\nStep 2: {gold[1]}\nAnswer: x") == 1
    with pytest.raises(ValueError, match="no 'world'"):
        true_error_step({"id": "x", "metadata": "{}"}, gold)


def test_larger_scenes_generate() -> None:
    cfg = SceneConfig(image_size=48, grid=3, max_objects=6)
    t = generate_support_rows(0, 0, 100, scene_config=cfg)
    assert max(len(json.loads(m)["world"]["scene"]["objects"]) for m in t.column("metadata").to_pylist()) == 6
    assert generate_eval_rows("corner", "test", 10, 0, cfg).num_rows == 10
