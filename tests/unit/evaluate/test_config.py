"""Evaluate config validation."""

from __future__ import annotations

import pytest

from edray.config import ConfigError, load_config
from edray.evaluate.config import EvaluateConfig

BASE = ["target=[t.parquet]", "general=g.parquet", "base.name=base", "base.path=/m"]


def test_defaults_validate():
    cfg = load_config(EvaluateConfig, None, BASE)
    assert cfg.backend == "transformers" and cfg.cap_retention is True and cfg.models == []


def test_duplicate_model_names_rejected():
    with pytest.raises(ConfigError, match="unique"):
        load_config(EvaluateConfig, None, BASE + ["models=[{name: base, path: /x}]"])


def test_transformers_backend_needs_base_path():
    with pytest.raises(ConfigError, match="base.path"):
        load_config(EvaluateConfig, None, ["target=[t]", "general=g", "base.name=b"])
    cfg = load_config(EvaluateConfig, None, ["target=[t]", "general=g", "base.name=b", "backend=serve"])
    assert cfg.base.path is None


def test_path_and_adapter_exclusive_and_unknown_fields():
    with pytest.raises(ConfigError, match="not both"):
        load_config(EvaluateConfig, None, BASE + ["models=[{name: m, path: /x, adapter: /y}]"])
    with pytest.raises(ConfigError, match="unknown field"):
        load_config(EvaluateConfig, None, BASE + ["bogus=1"])
    with pytest.raises(ConfigError, match="family"):
        load_config(EvaluateConfig, None, BASE + ["generation.family=nope"])
