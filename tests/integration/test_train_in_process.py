"""The train stage's in-process runner (one CPU worker, no Ray Train): the same loop as on Ray Train,
its own checkpoints, exact resumption after a crash, the same quarantine, and the loaded student shared
across runs in one process."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edray.schemas import QUARANTINE, TRAIN_ADAPTER, TRAIN_METRICS, TRAIN_MODEL
from edray.train.config import TrainConfig

RESUME_TOL = 1e-6


class CrashAt:
    """Raise right after optimizer step ``step``, on the first attempt only (the marker file says so)."""

    def __init__(self, marker: str, step: int) -> None:
        self.marker, self.step = marker, step

    def __call__(self, step: int, rank: int) -> None:
        if step == self.step and not Path(self.marker).exists():
            Path(self.marker).write_text("crashed")
            raise RuntimeError(f"injected crash after step {step}")


def _config(mode: str = "lora", **over) -> TrainConfig:
    base = dict(
        mode=mode,
        torch_threads=1,
        batch_size=4,
        grad_accum=2,
        max_steps=10,  # 64 rows = 8 optimizer steps per epoch: the run crosses an epoch boundary
        checkpoint_every=3,
        seed=0,
        lora={"rank": 8, "alpha": 16, "dropout": 0.1},
        full={"last_n_layers": 1},
        optim={"lr": 1e-3, "warmup_steps": 2, "schedule": "cosine"},
    )
    return TrainConfig(**{**base, **over})


def _losses(stage: Path) -> list[float]:
    rows = sorted(pq.read_table(stage / TRAIN_METRICS).to_pylist(), key=lambda m: m["step"])
    return [m["loss"] for m in rows]


@pytest.fixture(scope="module")
def reference(train_student, train_selection, train_pool, tmp_path_factory) -> Path:
    from edray.train import job

    return job.run(_config(), tmp_path_factory.mktemp("inproc_ref"), train_student, train_selection, train_pool)


def test_one_cpu_worker_trains_in_process_and_exports(reference: Path, train_student: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["metrics"]["runner"] == "in_process"
    assert manifest["counts"]["steps"] == 10 and manifest["counts"]["rows"] == 64
    steps = sorted(pq.read_table(reference / TRAIN_METRICS)["step"].to_pylist())
    assert steps == list(range(1, 11))
    losses = _losses(reference)
    assert losses[-1] < losses[0]
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(train_student), reference / TRAIN_ADAPTER)
    assert any(float(p.abs().sum()) > 0 for n, p in model.named_parameters() if "lora_B" in n)
    # the resumable checkpoints are gone once the stage committed
    assert not any((reference.parent / "train_checkpoints").glob("train-*/checkpoint_*"))


def test_in_process_resumes_exactly_after_a_crash(reference: Path, train_student, train_selection, train_pool, tmp_path) -> None:
    from edray.train import job

    marker = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="injected crash after step 7"):
        job.run(_config(), tmp_path / "run", train_student, train_selection, train_pool, on_step=CrashAt(str(marker), 7))
    ckpts = sorted(p.name for p in (tmp_path / "run" / "round_0" / "train_checkpoints").glob("train-*/checkpoint_*"))
    assert ckpts == ["checkpoint_000000003", "checkpoint_000000006"]
    seen: list[int] = []
    stage = job.run(_config(), tmp_path / "run", train_student, train_selection, train_pool, on_step=lambda s, r: seen.append(s))
    assert seen == [7, 8, 9, 10]  # restored at step 6: nothing before it is trained again
    assert sorted(pq.read_table(stage / TRAIN_METRICS)["step"].to_pylist()) == list(range(1, 11))
    assert _losses(stage) == pytest.approx(_losses(reference), abs=RESUME_TOL)


def test_in_process_quarantines_like_ray_train(train_student, train_selection, train_pool, tmp_path) -> None:
    from edray.train import job

    pool = pq.read_table(train_pool)
    bad = pool.slice(0, 1).to_pylist()[0]
    bad["id"], bad["images"] = "corrupt-row", [b"not an image"]
    pq.write_table(pa.concat_tables([pool, pa.Table.from_pylist([bad], schema=pool.schema)]), tmp_path / "pool.parquet")
    ids = pq.read_table(train_selection)["id"].to_pylist() + ["corrupt-row", "missing-row"]
    pq.write_table(pa.table({"id": ids}), tmp_path / "selection.parquet")
    stage = job.run(
        _config("full", max_steps=2), tmp_path / "run", train_student, tmp_path / "selection.parquet", tmp_path / "pool.parquet"
    )
    q = {r["record_id"]: r for r in pq.read_table(stage / QUARANTINE).to_pylist()}
    assert set(q) == {"corrupt-row", "missing-row"}
    assert q["corrupt-row"]["field"] == "images" and q["missing-row"]["field"] == "id"
    assert (stage / TRAIN_MODEL / "config.json").is_file()


def test_shared_student_hands_out_independent_copies(train_student: Path) -> None:
    import torch

    from edray.train.model import load_student

    a, _ = load_student(str(train_student), share=True)
    b, _ = load_student(str(train_student), share=True)
    p_a, p_b = next(a.parameters()), next(b.parameters())
    assert p_a.data_ptr() != p_b.data_ptr() and torch.equal(p_a, p_b)
    with torch.no_grad():
        p_a.add_(1.0)
    c, _ = load_student(str(train_student), share=True)
    assert torch.equal(next(c.parameters()), p_b)  # training one copy never leaks into the next arm


def test_in_process_refuses_what_it_cannot_run() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="in_process runs one CPU worker"):
        TrainConfig(runner="in_process", num_workers=2)
    assert TrainConfig().in_process and not TrainConfig(num_workers=2).in_process
    assert not TrainConfig(runner="ray_train").in_process
