"""The vLLM engine's Ray Serve LLM configuration and local LoRA adapters (no engine started)."""

from __future__ import annotations

import asyncio

import pytest

from edray.serve.config import ModelConfig
from edray.serve.vllm_engine import LocalAdapter, LocalLoraLoader, llm_config_for


def test_local_adapters_resolve_to_their_folders(tmp_path):
    (tmp_path / "base").mkdir()
    for name in ("b-tuned", "a-tuned"):
        (tmp_path / name).mkdir()
    model = ModelConfig.model_validate(
        {
            "name": "student",
            "engine": "vllm",
            "path": str(tmp_path / "base"),
            "max_model_len": 512,
            "adapters": [{"name": n, "path": str(tmp_path / n)} for n in ("b-tuned", "a-tuned")],
        }
    )
    cfg = llm_config_for(model)
    loader = LocalLoraLoader(download_timeout_s=30.0, max_tries=3)
    got = asyncio.run(loader.load_model_from_config("b-tuned", cfg))
    # Ids are 1-based in sorted name order, so every replica gives an adapter the same id.
    assert got == LocalAdapter("b-tuned", str((tmp_path / "b-tuned").resolve()), 512, 2)
    assert asyncio.run(loader.load_model_from_config("a-tuned", cfg)).lora_assigned_int_id == 1
    with pytest.raises(ValueError, match="'c-tuned' is not configured"):
        asyncio.run(loader.load_model_from_config("c-tuned", cfg))
