"""The data order of the in-process runner across epochs, and how a small selection fills one step."""

from __future__ import annotations

import pyarrow as pa

from edray.train.config import TrainConfig
from edray.train.datasets import repeats_needed
from edray.train.loop import LocalContext


def test_each_epoch_is_a_fresh_permutation_and_resumes_at_the_same_batch(tmp_path) -> None:
    ctx = LocalContext(pa.table({"id": [f"r{i}" for i in range(20)]}), tmp_path)
    epochs = [[r["id"] for b in ctx.micro_batches(4, e, seed=0, skip=0) for r in b] for e in range(3)]
    assert all(sorted(e) == sorted(f"r{i}" for i in range(20)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    resumed = [r["id"] for b in ctx.micro_batches(4, 1, seed=0, skip=2) for r in b]
    assert resumed == epochs[1][8:]


def test_a_selection_smaller_than_one_step_is_repeated_until_it_fills_one() -> None:
    cfg = TrainConfig(batch_size=8, grad_accum=2, num_workers=2)  # 32 rows per optimizer step
    assert repeats_needed(32, cfg) == 1 and repeats_needed(100, cfg) == 1
    assert repeats_needed(31, cfg) == 2 and repeats_needed(10, cfg) == 4 and repeats_needed(1, cfg) == 32
