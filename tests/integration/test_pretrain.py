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


def test_general_suite_score_carries_check_a(pretrained_student_dir):
    from edray.world.checks import NONGAP_MIN, format_student_gaps
    from edray.world.pretrain import PretrainConfig, _score_general

    cfg = PretrainConfig.ci(eval_size=160)
    scored = _score_general(pretrained_student_dir, cfg)
    check = scored["check_a"]
    per_skill, chance = check["measured"]["per_skill"], check["measured"]["chance"]
    assert check["check"] == "a" and set(check["measured"]["gap_skills"]) == set(cfg.gaps)
    assert per_skill == pytest.approx(scored["per_skill"], abs=1e-4)
    assert sum(scored["counts"].values()) >= cfg.eval_size
    # The verdict follows from the numbers it reports.
    weak = [s for s, a in per_skill.items() if s not in cfg.gaps and a < NONGAP_MIN]
    over = [s for s in cfg.gaps if s in per_skill and per_skill[s] > chance[s] + 0.10]
    if set(cfg.gaps) <= set(per_skill):
        assert check["status"] == ("fail" if weak or over else "pass")
    else:
        assert check["status"] == "not_measured"
    text = format_student_gaps(check, scored["counts"])
    assert all(f"{g} (gap)" in text for g in cfg.gaps if g in per_skill)
    assert f"(a) student_gaps  {check['status'].upper()}" in text
