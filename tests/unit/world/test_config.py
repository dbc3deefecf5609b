"""World config: bounds, cross-field checks, registration for `edray config show world`."""

from __future__ import annotations

import pytest

from edray.config import ConfigError, load_config
from edray.world.config import WorldConfig


def test_defaults_validate_and_overrides_apply() -> None:
    cfg = load_config(WorldConfig, overrides=["pool.pool_size=500", "pool.mix.attribute_binding=0.005", "teacher.noise.failed=0.1"])
    assert cfg.pool.pool_size == 500 and cfg.pool.mix == {"attribute_binding": 0.005}
    assert cfg.teacher.noise.failed == 0.1
    assert cfg.scene.image_size == 32 and cfg.scene.grid == 2


@pytest.mark.parametrize(
    "override,needle",
    [
        ("scene.max_objects=5", "exceeds grid"),
        ("scene.image_size=33", "multiple of grid"),
        ("pool.formats=[csv]", "formats"),
        ("teacher.noise.failed=1.5", "teacher.noise.failed"),
        ("pool.colour=1", "unknown field"),
        ("pool.mix.juggling=1", "unknown skill or source-task"),
        ("eval.target_tasks=[nope]", "unknown target tasks"),
    ],
)
def test_bad_values_name_the_field(override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(WorldConfig, overrides=[override])


def test_registered_for_config_show() -> None:
    from typer.testing import CliRunner

    from edray.cli import app

    result = CliRunner().invoke(app, ["config", "show", "world"])
    assert result.exit_code == 0, result.output
    assert "pool.mix" in result.output and "teacher.noise.malformed" in result.output
