"""TrainConfig validation and the default LoRA target regex."""

from __future__ import annotations

import re

import pytest

from edray.config import ConfigError, load_config
from edray.train.config import TrainConfig


def test_defaults_and_overrides() -> None:
    cfg = load_config(TrainConfig, None, ["mode=spider", "full.last_n_layers=2", "optim.lr=1e-3"])
    assert cfg.mode == "spider" and cfg.full.last_n_layers == 2 and cfg.optim.lr == 1e-3


@pytest.mark.parametrize(
    "override, field",
    [
        ("mode=qlora", "mode"),
        ("batch_size=0", "batch_size"),
        ("lora.dropout=1.5", "lora.dropout"),
        ("optim.schedule=step", "optim.schedule"),
        ("epochs_typo=3", "epochs_typo"),
    ],
)
def test_invalid_values_name_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(field)):
        load_config(TrainConfig, None, [override])


def test_full_mode_must_train_something() -> None:
    with pytest.raises(ConfigError, match="trains nothing"):
        load_config(TrainConfig, None, ["mode=full", "full.last_n_layers=0", "full.train_projector=false"])


def test_default_lora_targets_exclude_the_vision_tower() -> None:
    rx = re.compile(TrainConfig().lora.targets)
    assert rx.fullmatch("base_model.model.model.language_model.layers.0.self_attn.q_proj")
    assert rx.fullmatch("model.language_model.layers.3.self_attn.o_proj")
    assert not rx.fullmatch("model.vision_tower.encoder.layers.0.self_attn.q_proj")
    assert not rx.fullmatch("model.language_model.layers.0.mlp.up_proj")
