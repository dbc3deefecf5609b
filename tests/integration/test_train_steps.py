"""Fair arms: every budget trains exactly ``max_steps`` optimizer steps, on both runners. A selection
larger than one epoch is cycled (a new order each epoch); one smaller than a batch is repeated whole."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edray.schemas import TRAIN_METRICS
from edray.train.config import TrainConfig

pytestmark = pytest.mark.slow


def _config(**over) -> TrainConfig:
    base = dict(mode="lora", torch_threads=1, batch_size=4, seed=0, checkpoint_every=4,
                lora={"rank": 4, "alpha": 8}, optim={"lr": 1e-3, "warmup_steps": 0})  # fmt: skip
    return TrainConfig(**{**base, **over})


def _selection(pool: Path, n: int, out: Path) -> Path:
    ids = pq.read_table(pool, columns=["id"])["id"].to_pylist()[:n]
    pq.write_table(pa.table({"id": ids}), out)
    return out


def _steps(stage: Path) -> tuple[int, list[int], list[int]]:
    manifest = json.loads((stage / "manifest.json").read_text())
    rows = sorted(pq.read_table(stage / TRAIN_METRICS).to_pylist(), key=lambda m: m["step"])
    return manifest["counts"]["steps"], [m["step"] for m in rows], [m["epoch"] for m in rows]


@pytest.mark.parametrize(("n_rows", "epochs_seen"), [(3, 9), (20, 2), (40, 1)])
def test_in_process_trains_exactly_max_steps_whatever_the_selection(
    n_rows: int, epochs_seen: int, train_student, train_pool, tmp_path
) -> None:
    from edray.train import job

    # 3 rows < batch 4: repeated twice (6 rows, one step per epoch); 20 rows: 5 steps per epoch; 40 rows: 10
    selection = _selection(train_pool, n_rows, tmp_path / "selection.parquet")
    stage = job.run(_config(max_steps=9), tmp_path / "run", train_student, selection, train_pool)
    steps, seen, epochs = _steps(stage)
    assert steps == 9 and seen == list(range(1, 10))
    assert len(set(epochs)) == epochs_seen


def test_in_process_resumes_mid_cycle_of_a_tiny_selection(train_student, train_pool, tmp_path) -> None:
    from edray.train import job

    selection = _selection(train_pool, 3, tmp_path / "selection.parquet")

    def crash(step: int, rank: int) -> None:
        if step == 6 and not (tmp_path / "crashed").exists():
            (tmp_path / "crashed").write_text("1")
            raise RuntimeError("injected crash after step 6")

    reference = job.run(_config(max_steps=9), tmp_path / "ref", train_student, selection, train_pool)
    with pytest.raises(RuntimeError, match="injected crash"):
        job.run(_config(max_steps=9), tmp_path / "run", train_student, selection, train_pool, on_step=crash)
    seen: list[int] = []
    stage = job.run(_config(max_steps=9), tmp_path / "run", train_student, selection, train_pool,
                    on_step=lambda s, r: seen.append(s))  # fmt: skip
    assert seen == [5, 6, 7, 8, 9]  # restored from the checkpoint of step 4
    ref_loss = [m["loss"] for m in sorted(pq.read_table(reference / TRAIN_METRICS).to_pylist(), key=lambda m: m["step"])]
    loss = [m["loss"] for m in sorted(pq.read_table(stage / TRAIN_METRICS).to_pylist(), key=lambda m: m["step"])]
    assert loss == pytest.approx(ref_loss, abs=1e-6)


def _ray_tiny(**over) -> TrainConfig:
    # 2 workers x batch 4: 3 rows are repeated 3 times (9 rows, 4 per worker, one step per epoch)
    return _config(max_steps=5, num_workers=2, cpus_per_worker=0.5, checkpoint_every=2, max_failures=1, **over)


@pytest.fixture(scope="module")
def ray_tiny_reference(ray_session, train_student, train_pool, tmp_path_factory) -> Path:
    from edray.train import job

    tmp = tmp_path_factory.mktemp("ray_tiny")
    selection = _selection(train_pool, 3, tmp / "selection.parquet")
    return job.run(_ray_tiny(), tmp / "run", train_student, selection, train_pool)


def test_ray_train_trains_exactly_max_steps_on_a_selection_smaller_than_a_batch(ray_tiny_reference: Path) -> None:
    steps, seen, epochs = _steps(ray_tiny_reference)
    assert json.loads((ray_tiny_reference / "manifest.json").read_text())["metrics"]["runner"] == "ray_train"
    assert steps == 5 and seen == list(range(1, 6)) and epochs == [0, 1, 2, 3, 4]


class _DieOnce:
    """Kill the worker process of rank 1 right after optimizer step ``step``, on the first attempt only."""

    def __init__(self, marker: str, step: int) -> None:
        self.marker, self.step = marker, step

    def __call__(self, step: int, rank: int) -> None:
        import os

        if step == self.step and rank == 1 and not os.path.exists(self.marker):
            Path(self.marker).write_text("killed")
            os._exit(1)


def test_ray_train_resumes_a_cycled_selection_after_an_epoch_boundary(
    ray_tiny_reference: Path, train_student, train_pool, tmp_path
) -> None:
    from edray.train import job

    # killed after step 3 (epoch 2); the worker group restarts from the checkpoint of step 2 (end of epoch 1)
    selection = _selection(train_pool, 3, tmp_path / "selection.parquet")
    marker = tmp_path / "killed"
    stage = job.run(_ray_tiny(), tmp_path / "run", train_student, selection, train_pool, on_step=_DieOnce(str(marker), 3))
    assert marker.exists(), "the worker was never killed"
    steps, seen, _ = _steps(stage)
    assert steps == 5 and seen == list(range(1, 6))
    loss = lambda st: [m["loss"] for m in sorted(pq.read_table(st / TRAIN_METRICS).to_pylist(), key=lambda m: m["step"])]  # noqa: E731
    assert loss(stage) == pytest.approx(loss(ray_tiny_reference), abs=1e-5)


# The grid's LoRA recipe (docs/train.md, "LoRA recipe"): attention and MLP projections of the language model,
# the projector trained in full.
LORA_RECIPE = {"rank": 16, "alpha": 32, "dropout": 0.0, "targets": r".*language_model.*\.(q|k|v|o|gate|up|down)_proj",
               "train_projector": True}  # fmt: skip


def test_lora_recipe_adapts_attention_and_mlp_and_trains_the_projector(train_student, train_pool, tmp_path) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from edray.schemas import TRAIN_ADAPTER
    from edray.train import job
    from edray.train.model import build_model

    cfg = _config(max_steps=3, lora=LORA_RECIPE, optim={"lr": 2e-3, "warmup_steps": 0})
    model, _ = build_model(cfg, str(train_student))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(f".{proj}.lora_A" in n and "language_model" in n for n in trainable), proj
    assert any("multi_modal_projector" in n for n in trainable)
    assert not any("vision_tower" in n for n in trainable)

    selection = _selection(train_pool, 16, tmp_path / "selection.parquet")
    stage = job.run(cfg, tmp_path / "run", train_student, selection, train_pool)
    saved = load_file(str(stage / TRAIN_ADAPTER / "adapter_model.safetensors"))
    assert any("mlp" in k and "lora_B" in k for k in saved) and any("multi_modal_projector" in k for k in saved)
    base = AutoModelForImageTextToText.from_pretrained(train_student)
    before = {n: p.clone() for n, p in base.named_parameters() if "multi_modal_projector" in n}
    tuned = PeftModel.from_pretrained(base, stage / TRAIN_ADAPTER).merge_and_unload()
    after = {n: p for n, p in tuned.named_parameters() if "multi_modal_projector" in n}
    assert before and any(not torch.equal(before[n], after[n]) for n in before)
