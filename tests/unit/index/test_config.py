"""Index config parsing: defaults validate, bad values name the field."""

from __future__ import annotations

import pytest

from edray.config import ConfigError, load_config
from edray.index.config import IndexConfig
from edray.index.search import filter_sql


def test_defaults_and_overrides(tmp_path) -> None:
    cfg = load_config(IndexConfig, None, ["pool=data/pool", "embed.text=instruction", "store.commit_rows=10"])
    assert cfg.embed.text == "instruction" and cfg.store.commit_rows == 10
    # The default teacher is the configured endpoint; the world teacher is chosen explicitly.
    assert cfg.annotate.backend == "http" and cfg.annotate.base_url == "http://127.0.0.1:8000/v1"


def test_engine_backend_and_the_world_alias() -> None:
    with pytest.raises(ConfigError, match="annotate.engine"):
        load_config(IndexConfig, None, ["pool=p", "annotate.backend=engine"])
    with pytest.raises(ConfigError, match="base_url"):
        load_config(IndexConfig, None, ["pool=p", "annotate.base_url=ftp://x"])
    legacy = IndexConfig.model_validate({"pool": "p", "annotate": {"backend": "world", "world_teacher": {"seed": 3}}})
    assert legacy.annotate.backend == "engine" and legacy.annotate.engine == "edray.world.teacher:WorldTeacher"
    assert legacy.annotate.engine_options == {"seed": 3}


def test_unknown_field_and_bounds() -> None:
    with pytest.raises(ConfigError, match="embed.colour"):
        load_config(IndexConfig, None, ["pool=p", "embed.colour=1"])
    with pytest.raises(ConfigError, match="embed.actors"):
        load_config(IndexConfig, None, ["pool=p", "embed.actors=0"])


def test_filter_sql() -> None:
    assert filter_sql({"source_task": "t'x", "id": ["a", "b"]}) == "source_task = 't''x' AND id IN ('a', 'b')"
    assert filter_sql("position > 3") == "position > 3"
    with pytest.raises(ValueError):
        filter_sql({"id; drop": 1})
