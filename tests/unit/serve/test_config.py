"""Serve and client configs: defaults, bounds, names."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edray.config import ConfigError, load_config
from edray.serve.config import ClientConfig, ServeConfig


def test_defaults_are_safe():
    cfg = ServeConfig()
    assert cfg.host == "127.0.0.1"
    assert cfg.api_key_env == "EDRAY_API_KEY"
    assert cfg.limits.allow_image_urls is False
    model = ServeConfig.model_validate({"models": [{"name": "s", "path": "/m"}]}).models[0]
    assert model.trust_remote_code is False and model.engine == "transformers"


def test_served_names_and_duplicates():
    cfg = ServeConfig.model_validate(
        {"models": [{"name": "s", "path": "/m", "adapters": [{"name": "a", "path": "/a"}]}, {"name": "t", "engine": "world_teacher"}]}
    )
    assert cfg.served_names() == ["s", "a", "t"]
    with pytest.raises(ValidationError, match="used twice"):
        ServeConfig.model_validate({"models": [{"name": "s", "path": "/m"}, {"name": "x", "path": "/m", "adapters": [{"name": "s", "path": "/a"}]}]})


@pytest.mark.parametrize(
    "model, words",
    [
        ({"name": "s"}, "needs a model folder"),
        ({"name": "t", "engine": "world_teacher", "adapters": [{"name": "a", "path": "/a"}]}, "no LoRA"),
        ({"name": "s", "path": "/m", "adapters": [{"name": "a", "path": "/a"}, {"name": "a", "path": "/b"}]}, "duplicate"),
        ({"name": "bad name", "path": "/m"}, "model name"),
        ({"name": "s", "path": "/m", "gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
    ],
)
def test_invalid_models(model, words):
    with pytest.raises(ValidationError, match=words):
        ServeConfig.model_validate({"models": [model]})


def test_unknown_field_and_env_name(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("serve:\n  port: 9000\n  colour: red\n")
    with pytest.raises(ConfigError, match="colour"):
        load_config(ServeConfig, path, section="serve")
    with pytest.raises(ValidationError):
        ServeConfig(api_key_env="NOT A VAR")


def test_client_config():
    cfg = ClientConfig(model="m", base_url="http://h:1/v1/")
    assert cfg.base_url == "http://h:1/v1" and cfg.cache_dir is None
    with pytest.raises(ValidationError):
        ClientConfig(model="m", base_url="ftp://x")
    with pytest.raises(ValidationError):
        ClientConfig(model="m", max_concurrency=0)


def test_engines_by_import_path() -> None:
    from edray.serve.config import ModelConfig
    from edray.serve.engines import load_engine

    m = ModelConfig(name="t", engine="world_teacher", options={"seed": 2})
    assert m.engine == "edray.world.teacher:WorldTeacher" and m.by_import_path
    engine = load_engine(m.engine, m.name, m.options)
    assert engine.model_ids() == ["t"] and engine.config.seed == 2
    with pytest.raises(ValueError, match="import path"):
        ModelConfig(name="t", engine="not a path")
    with pytest.raises(ValueError, match="takes no options"):
        ModelConfig(name="s", engine="transformers", path="/m", options={"x": 1})
    from edray.serve.engine import EngineError

    with pytest.raises(EngineError, match="cannot be imported"):
        load_engine("edray.nowhere:Thing", "t")
    with pytest.raises(EngineError, match="refused its options"):
        load_engine("edray.world.teacher:WorldTeacher", "t", {"colour": 1})
