"""Config loading: YAML + --set overrides, and errors that name the field, the value and what is allowed."""

from __future__ import annotations

from typing import Literal, Optional

import pytest
from pydantic import Field

from edray.config import (
    ConfigError,
    EdrayModel,
    apply_overrides,
    describe_config,
    dump_config,
    load_config,
    parse_scalar,
)


class Optim(EdrayModel):
    lr: float = Field(1e-3, gt=0, le=1, description="Learning rate.")
    betas: list[float] = Field([0.9, 0.999], description="Adam betas.")


class Train(EdrayModel):
    mode: Literal["lora", "full", "spider"] = Field("lora", description="Update mode.")
    steps: int = Field(100, ge=1, le=100_000, description="Optimizer steps.")
    optim: Optim = Field(default_factory=Optim, description="Optimizer.")
    warm: Optional[Optim] = Field(None, description="Warm-up optimizer.")


def error_of(data=None, overrides=(), tmp_path=None, text=None) -> str:
    path = None
    if text is not None:
        path = tmp_path / "c.yaml"
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        if data is not None:
            from edray.config import validate_config

            validate_config(Train, apply_overrides(data, list(overrides)))
        else:
            load_config(Train, path, list(overrides))
    return str(info.value)


def test_defaults_file_and_overrides_merge(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  mode: full\n  steps: 5\n  optim: {lr: 0.01}\nother: {x: 1}\n")
    cfg = load_config(Train, p, ["steps=7", "optim.lr=3e-4", "optim.betas=[0.8, 0.9]"], section="train")
    assert cfg.mode == "full" and cfg.steps == 7 and cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.optim.betas == [0.8, 0.9]
    assert load_config(Train).steps == 100
    assert dump_config(cfg)["optim"]["lr"] == pytest.approx(3e-4)


def test_unknown_key_names_the_key_and_the_allowed_ones():
    msg = error_of({"stpes": 3})
    assert "stpes" in msg and "unknown field" in msg
    assert "allowed here: mode, optim, steps, warm" in msg


def test_nested_unknown_key_and_optional_section():
    msg = error_of({"optim": {"learning_rate": 0.1}})
    assert "optim.learning_rate" in msg and "allowed here: betas, lr" in msg
    msg = error_of({"warm": {"lrr": 0.1}})
    assert "warm.lrr" in msg and "allowed here: betas, lr" in msg


def test_wrong_type_names_field_and_value():
    msg = error_of({}, ["steps=many"])
    assert "steps: 'many'" in msg and "integer" in msg
    msg = error_of({"mode": "qlora"})
    assert "mode: 'qlora'" in msg and "'lora', 'full' or 'spider'" in msg


def test_out_of_bounds_names_field_value_and_bound():
    msg = error_of({}, ["steps=0"])
    assert "steps: 0" in msg and "greater than or equal to 1" in msg
    msg = error_of({}, ["optim.lr=5"])
    assert "optim.lr: 5" in msg and "less than or equal to 1" in msg


def test_every_problem_is_reported_one_per_line():
    msg = error_of({"steps": -1, "optim": {"lr": 0}, "extra": 1})
    lines = msg.splitlines()
    assert lines[0].startswith("invalid Train")
    assert sum(1 for ln in lines if ln.startswith("  ")) == 3
    assert "Traceback" not in msg


@pytest.mark.parametrize(
    "override,expected",
    [
        ("steps", "--set 'steps': expected KEY=VALUE"),
        ("=3", "empty key"),
        ("mode.x=1", "mode is 'lora', not a section"),
    ],
)
def test_bad_set_syntax(override, expected):
    with pytest.raises(ConfigError, match="--set") as info:
        apply_overrides({"mode": "lora"}, [override])
    assert expected in str(info.value)


def test_yaml_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Train, tmp_path / "missing.yaml")
    msg = error_of(tmp_path=tmp_path, text="steps: [1, 2\n")
    assert "c.yaml" in msg and "not valid YAML" in msg
    msg = error_of(tmp_path=tmp_path, text="- 1\n- 2\n")
    assert "top level must be a mapping" in msg
    msg = error_of(tmp_path=tmp_path, text="steps: 0\n")
    assert "c.yaml" in msg and "steps: 0" in msg
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(Train, tmp_path / "empty.yaml").steps == 100


def test_parse_scalar_uses_yaml_types():
    assert parse_scalar("3") == 3 and parse_scalar("true") is True and parse_scalar("null") is None
    assert parse_scalar("[a, b]") == ["a", "b"] and parse_scalar("text") == "text"
    assert parse_scalar("{unclosed") == "{unclosed"


def test_overrides_do_not_mutate_input():
    data = {"optim": {"lr": 0.1}}
    out = apply_overrides(data, ["optim.lr=0.2", "a.b.c=1"])
    assert data == {"optim": {"lr": 0.1}} and out["optim"]["lr"] == 0.2 and out["a"]["b"]["c"] == 1


def test_describe_config_lists_every_field_with_description():
    rows = {key: (value, desc) for key, value, desc in describe_config(Train(steps=3))}
    assert rows["steps"] == ("3", "Optimizer steps.")
    assert rows["optim.lr"][1] == "Learning rate."
    assert set(rows) == {"mode", "steps", "optim.lr", "optim.betas", "warm"}


def test_read_config_is_bounded():
    from edray.data.config import ReadConfig

    with pytest.raises(ConfigError) as info:
        load_config(ReadConfig, None, ["max_image_bytes=0", "format=tiff"])
    msg = str(info.value)
    assert "max_image_bytes: 0" in msg and "format: 'tiff'" in msg
    assert all(desc for _, _, desc in describe_config(ReadConfig()))
