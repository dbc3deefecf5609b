"""The diagnose config: defaults validate, bounds and cross-field rules hold."""

from __future__ import annotations

import pytest

from edray.config import ConfigError, load_config
from edray.diagnose.config import DiagnoseConfig


def test_defaults_validate() -> None:
    cfg = DiagnoseConfig()
    assert cfg.student.family in cfg.student.templates


@pytest.mark.parametrize(
    "overrides,field",
    [
        (["locate.delta=1.5"], "locate.delta"),
        (["locate.consecutive=0"], "locate.consecutive"),
        (["locate.prior_strength=1.0"], "locate.prior_strength"),
        (["student.family=unknown"], "student"),
        (["skill.examples=[{question: q}]"], "skill"),
        (["skill.reject=['(']"], "skill.reject"),
        (["locate.method=oracle"], "locate.method"),
    ],
)
def test_diagnose_rejects_bad_values(overrides: list[str], field: str) -> None:
    with pytest.raises(ConfigError, match=field.split(".")[0]):
        load_config(DiagnoseConfig, None, overrides)
