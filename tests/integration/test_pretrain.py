"""Generic pretraining of the world student on Ray Train: the loss falls, the folder loads in
transformers, and a second call with the same config is a cache hit."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_ci_pretraining_lowers_the_loss_and_is_cached(pretrained_student_dir, tmp_path_factory):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from edray.world.pretrain import PRETRAIN_LOG, PretrainConfig, pretrain_student

    log = json.loads((pretrained_student_dir / PRETRAIN_LOG).read_text())
    losses = [p["loss"] for p in log["curve"]]
    cfg = PretrainConfig.ci()
    assert len(losses) == cfg.steps // cfg.log_every
    # The first window averages the random-init loss; by the end the answers are far more likely.
    assert losses[-1] < 0.6 * losses[0]
    assert min(losses[-3:]) < min(losses[:3])

    # The vision warm-up taught the tower what lies under each patch before instruction training.
    warm = log["vision_warmup"]
    assert min(v for k, v in warm.items() if k.endswith("_acc")) >= 0.9, warm

    manifest = json.loads((pretrained_student_dir / "manifest.json").read_text())
    assert manifest["counts"] == {"rows": cfg.num_rows, "steps": cfg.steps}
    # A cache hit rewrites nothing: the weights and the manifest keep their bytes and modification times.
    files = sorted(pretrained_student_dir.glob("*.safetensors")) + [pretrained_student_dir / "manifest.json"]
    before = {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files}
    again = pretrain_student(cfg, pretrained_student_dir)
    assert again == pretrained_student_dir
    assert {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files} == before
    assert json.loads((again / "manifest.json").read_text())["finished_at"] == manifest["finished_at"]

    AutoProcessor.from_pretrained(pretrained_student_dir)
    AutoModelForImageTextToText.from_pretrained(pretrained_student_dir)
