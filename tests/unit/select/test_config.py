"""The select config: defaults validate, bounds and the one-budget rule hold."""

from __future__ import annotations

import pytest

from edray.config import ConfigError, load_config
from edray.select.config import SelectConfig


def test_defaults_validate() -> None:
    cfg = SelectConfig()
    assert cfg.budget == 1000 and cfg.budget_fraction is None and cfg.mode == "bm25"


def test_select_needs_exactly_one_budget() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        load_config(SelectConfig, None, ["budget_fraction=0.1"])
    cfg = load_config(SelectConfig, None, ["budget=null", "budget_fraction=0.1"])
    assert cfg.budget is None and cfg.budget_fraction == 0.1
    with pytest.raises(ConfigError, match="replay_share"):
        load_config(SelectConfig, None, ["replay_share=1.5"])
    with pytest.raises(ConfigError, match="mode"):
        load_config(SelectConfig, None, ["mode=sparse"])
