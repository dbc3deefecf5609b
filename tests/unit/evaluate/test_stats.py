"""The paired bootstrap of edray.evaluate.stats on constructed arms whose true difference is known."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edray.evaluate.stats import paired_bootstrap, paired_matrix


def _arms(seeds: int, items: int, p_a: float, p_b: float, rng_seed: int = 0) -> tuple[dict, dict]:
    rng = np.random.default_rng(rng_seed)
    a = {(s, f"item-{i}"): bool(x) for s in range(seeds) for i, x in enumerate(rng.random(items) < p_a)}
    b = {(s, f"item-{i}"): bool(x) for s in range(seeds) for i, x in enumerate(rng.random(items) < p_b)}
    return a, b


def test_identical_arms_give_a_zero_difference_and_an_interval_holding_zero() -> None:
    a, b = _arms(5, 400, 0.4, 0.4)
    got = paired_bootstrap(a, b, resamples=1000, seed=3)
    assert got.low < 0.0 < got.high
    assert got.n == 2000 and got.n_seeds == 5
    same = paired_bootstrap(a, a, resamples=200)
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0)


def test_a_constant_shift_gives_a_point_interval() -> None:
    rng = np.random.default_rng(1)
    b = {(s, i): float(x) for s in range(3) for i, x in enumerate(rng.random(50))}
    a = {k: v + 0.2 for k, v in b.items()}
    got = paired_bootstrap(a, b, resamples=500)
    assert got.mean == pytest.approx(0.2) and got.low == pytest.approx(0.2) and got.high == pytest.approx(0.2)


def test_the_interval_narrows_with_more_items_and_covers_the_true_shift() -> None:
    small = paired_bootstrap(*_arms(3, 100, 0.6, 0.4), resamples=1000)
    large = paired_bootstrap(*_arms(3, 2000, 0.6, 0.4), resamples=1000)
    assert large.high - large.low < 0.5 * (small.high - small.low)
    assert large.low < 0.2 < large.high and large.low > 0.1


def test_deterministic_per_seed_and_sensitive_to_it() -> None:
    a, b = _arms(4, 200, 0.5, 0.45)
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    assert paired_bootstrap(a, b, seed=7) != paired_bootstrap(a, b, seed=8)


def test_seed_spread_widens_the_interval() -> None:
    # Same item noise, but arm A's advantage varies by seed (+0.3, -0.1, +0.1): resampling seeds must
    # carry that spread, so the interval is wider than with a constant +0.1 advantage.
    rng = np.random.default_rng(2)
    b = {(s, i): float(rng.random() < 0.5) for s in range(3) for i in range(300)}
    shifts = {0: 0.3, 1: -0.1, 2: 0.1}
    spread = paired_bootstrap({k: v + shifts[k[0]] for k, v in b.items()}, b, resamples=2000)
    steady = paired_bootstrap({k: v + 0.1 for k, v in b.items()}, b, resamples=2000)
    assert spread.mean == pytest.approx(steady.mean)
    assert spread.high - spread.low > 0.2 > steady.high - steady.low


def test_unpaired_keys_are_left_out_and_ragged_seeds_work() -> None:
    a = {(0, "x"): 1.0, (0, "y"): 1.0, (1, "x"): 0.0, (9, "only-a"): 1.0}
    b = {(0, "x"): 0.0, (0, "y"): 0.0, (1, "x"): 0.0, (8, "only-b"): 1.0}
    diffs, counts = paired_matrix(a, b)
    assert counts.tolist() == [2, 1] and np.isnan(diffs[1, 1])
    got = paired_bootstrap(a, b, resamples=300)
    assert got.n == 3 and got.mean == pytest.approx(2 / 3)
    assert 0.0 <= got.low <= got.high <= 1.0
    with pytest.raises(ValueError, match="share no"):
        paired_bootstrap({(0, "x"): 1.0}, {(0, "y"): 1.0})


def test_headline_size_runs_well_under_a_second() -> None:
    a, b = _arms(5, 1000, 0.5, 0.4)
    started = time.perf_counter()
    got = paired_bootstrap(a, b, resamples=2000)
    assert time.perf_counter() - started < 1.0
    assert got.n == 5000 and got.low < got.mean < got.high
