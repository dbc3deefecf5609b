"""SPIDER mask (docs/method.md §2) against hand-computed values, guards, and state round trip."""

from __future__ import annotations

import math

import pytest
import torch

from edray.train.spider import SpiderError, SpiderState, apply_mask, importance, spider_mask

# Hand computation for theta0 = [0, 1, 2, 3] and G = [3, -2, 1, 0]:
#   |theta0| = [0, 1, 2, 3]: mean 1.5, unbiased std sqrt(5/3) = 1.290994
#   z = [-1.161895, -0.387298, 0.387298, 1.161895]
#   I_pre = sigmoid(z) = [0.238323, 0.404368, 0.595632, 0.761677]
#   |G| = [3, 2, 1, 0] has the same spread reversed, so I_ft = [0.761677, 0.595632, 0.404368, 0.238323]
#   I_ft > I_pre on entries 0 and 1: M = I_ft / (I_pre + I_ft) = [0.761677, 0.595632, 0, 0]
#   (sigmoid(z) + sigmoid(-z) = 1). Mean of the non-zero entries 0.678655;
#   M / mean = [1.122334, 0.877666, 0, 0] -> min(1, .) = [1, 0.877666, 0, 0]
I_PRE = [0.238323, 0.404368, 0.595632, 0.761677]
MASK = [1.0, 0.877666, 0.0, 0.0]


def test_importance_hand_values() -> None:
    got = importance(torch.tensor([0.0, 1.0, -2.0, 3.0]))  # sign must not matter
    assert got.tolist() == pytest.approx(I_PRE, abs=1e-5)


def test_mask_hand_values() -> None:
    m = spider_mask(torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([3.0, -2.0, 1.0, 0.0]))
    assert m.dtype == torch.float32
    assert m.tolist() == pytest.approx(MASK, abs=1e-5)


def test_apply_restores_masked_entries_to_theta0() -> None:
    theta0 = torch.tensor([0.0, 1.0, 2.0, 3.0])
    theta = torch.tensor([0.5, 2.0, 1.0, 4.0])  # after an optimizer step
    out = apply_mask(theta, theta0, torch.tensor(MASK))
    # entry 0 moves freely, entry 1 keeps 87.77% of its update, entries 2 and 3 return to theta0
    assert out.tolist() == pytest.approx([0.5, 1.0 + 0.877666, 2.0, 3.0], abs=1e-5)


def test_all_zero_tensor_has_zero_importance_and_full_mask() -> None:
    assert importance(torch.zeros(3, 2)).eq(0).all()
    # theta0 all zero: I_pre = 0 < I_ft wherever G != 0, so M = 1 there before and after normalization
    m = spider_mask(torch.zeros(4), torch.tensor([1.0, -3.0, 0.5, 2.0]))
    assert m.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_one_element_tensor() -> None:
    assert importance(torch.tensor([-2.0])).tolist() == [0.5]
    assert importance(torch.tensor([0.0])).tolist() == [0.0]
    # equal importance (0.5 vs 0.5) is not "greater": the entry stays at theta0
    assert spider_mask(torch.tensor([1.5]), torch.tensor([0.2])).tolist() == [0.0]
    # a zero pre-trained value is released as soon as it gets a gradient
    assert spider_mask(torch.tensor([0.0]), torch.tensor([-0.2])).tolist() == [1.0]


def test_constant_magnitude_tensor_has_no_nan() -> None:
    r = importance(torch.tensor([2.0, -2.0, 2.0]))
    assert r.tolist() == [0.5, 0.5, 0.5]


def test_bf16_parameters_apply_in_fp32_and_keep_dtype() -> None:
    theta0 = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.bfloat16)
    p = torch.nn.Parameter(theta0.clone())
    state = SpiderState.from_parameters([("w", p)])
    assert state.theta0["w"].dtype == torch.float32
    p.grad = torch.tensor([3.0, -2.0, 1.0, 0.0], dtype=torch.bfloat16)
    state.capture([("w", p)])
    assert state.grad_sum["w"].dtype == torch.float32
    with torch.no_grad():
        p.copy_(torch.tensor([0.5, 2.0, 1.0, 4.0], dtype=torch.bfloat16))
    density = state.apply([("w", p)])
    assert p.dtype == torch.bfloat16
    expected = torch.tensor([0.5, 1.0 + 0.877666, 2.0, 3.0]).to(torch.bfloat16)
    assert p.detach().tolist() == expected.tolist()
    assert density == {"w": (2, 4)}


def test_no_gradient_observed_raises() -> None:
    with pytest.raises(SpiderError, match="no gradient observed for layer.w"):
        spider_mask(torch.randn(5), torch.zeros(5), "layer.w")
    p = torch.nn.Parameter(torch.randn(3))
    state = SpiderState.from_parameters([("w", p)])
    with pytest.raises(SpiderError, match="before any gradient"):
        state.apply([("w", p)])
    with pytest.raises(SpiderError, match="no gradient at capture"):
        state.capture([("w", p)])  # grad is None: captured after zero_grad(set_to_none=True)
    p.grad = torch.zeros(3)
    state.capture([("w", p)])
    with pytest.raises(SpiderError, match="no gradient observed"):
        state.apply([("w", p)])


def test_gradient_sum_is_signed_and_releases_entries_over_time() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, 1.0, 4.0, 4.0]))
    state = SpiderState.from_parameters([("w", p)])
    p.grad = torch.tensor([1.0, -1.0, 0.0, 0.0])
    state.capture([("w", p)])
    p.grad = torch.tensor([-1.0, -1.0, 0.0, 5.0])
    state.capture([("w", p)])
    # opposite gradients cancel: G = [0, -2, 0, 5]
    assert state.grad_sum["w"].tolist() == [0.0, -2.0, 0.0, 5.0]
    assert state.steps == 2


def test_state_dict_round_trip_and_footprint() -> None:
    torch.manual_seed(0)
    params = [("a.w", torch.nn.Parameter(torch.randn(3, 4))), ("b.bias", torch.nn.Parameter(torch.randn(4)))]
    state = SpiderState.from_parameters(params)
    for _, p in params:
        p.grad = torch.randn_like(p)
    state.capture(params)
    sd = state.state_dict()
    back = SpiderState.from_state_dict(sd)
    assert back.steps == 1
    for name, _ in params:
        assert torch.equal(back.theta0[name], state.theta0[name])
        assert torch.equal(back.grad_sum[name], state.grad_sum[name])
    # exactly two fp32 copies of the trainable weights
    n = sum(p.numel() for _, p in params)
    assert state.extra_bytes() == 2 * 4 * n
    # masks from the restored state are identical
    for name, _ in params:
        assert torch.equal(spider_mask(back.theta0[name], back.grad_sum[name]), spider_mask(state.theta0[name], state.grad_sum[name]))
    assert math.isclose(float(sd["steps"][0]), 1.0)


def _reference_importance(x: torch.Tensor) -> torch.Tensor:
    """R(x) written out from docs/method.md §2, one tensor at a time, with the documented guards."""
    a = x.float().abs()
    if not bool(a.any()):
        return torch.zeros_like(a)  # zero tensor -> zeros
    if a.numel() == 1:
        return torch.full_like(a, 0.5)  # one element: no spread
    std = a.std()
    if float(std) == 0.0:
        return (a > 0).float() * 0.5  # all magnitudes equal: sigmoid(0) on the non-zero entries
    return torch.sigmoid((a - a.mean()) / std)


def _reference_step(theta0: torch.Tensor, grad_sum: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, int]:
    """θ after SPIDER's mask, and the count of M > 0, from docs/method.md §2's formulas."""
    i_pre, i_ft = _reference_importance(theta0), _reference_importance(grad_sum)
    m = torch.zeros_like(i_ft)
    released = i_ft > i_pre
    m[released] = i_ft[released] / (i_pre[released] + i_ft[released])
    if bool(released.any()):
        m = torch.clamp(m / m[released].mean(), max=1.0)
    return theta0 + m * (theta - theta0), int(released.sum())


@pytest.mark.parametrize("group_numel", [1 << 22, 40])  # one group per size, or many small groups
def test_batched_state_equals_per_tensor_reference(monkeypatch: pytest.MonkeyPatch, group_numel: int) -> None:
    from edray.train import spider

    monkeypatch.setattr(spider, "_GROUP_NUMEL", group_numel)
    gen = torch.Generator().manual_seed(7)
    shapes = {
        "a.w": (16, 8), "b.w": (8, 16), "c.w": (128,), "d.w": (4, 4, 8),  # several share a size
        "e.bias": (8,), "f.scalar": (1,), "g.zero": (6, 5), "h.const": (7,), "i.w": (3, 50),
    }
    theta0 = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
    theta0["g.zero"].zero_()  # an all-zero pre-trained tensor
    theta0["h.const"] = torch.tensor([1.5, -1.5, 1.5, 1.5, -1.5, 1.5, 1.5])  # equal magnitudes
    params = [(n, torch.nn.Parameter(t.clone())) for n, t in theta0.items()]
    state = SpiderState.from_parameters(params)
    for _ in range(3):
        for _, p in params:
            p.grad = torch.randn(p.shape, generator=gen) * torch.rand(p.shape, generator=gen).lt(0.7)
        state.capture(params)
    with torch.no_grad():
        for _, p in params:
            p.add_(torch.randn(p.shape, generator=gen))  # an update of the size of the weights
    before = {n: p.detach().clone() for n, p in params}
    density = state.apply(params)
    assert list(density) == list(shapes)  # in the caller's order
    for name, p in params:
        want, released = _reference_step(theta0[name], state.grad_sum[name], before[name])
        assert torch.allclose(p.detach(), want, atol=1e-6, rtol=0), name
        assert density[name] == (released, p.numel()), name
    # the one-element tensor: equal importance (0.5 vs 0.5) keeps it at theta0
    assert params[5][1].detach().tolist() == theta0["f.scalar"].tolist()


def test_batched_state_names_the_tensor_without_gradient() -> None:
    params = [(n, torch.nn.Parameter(torch.randn(4, 4))) for n in ("x.w", "y.w", "z.w")]
    state = SpiderState.from_parameters(params)
    for name, p in params:
        p.grad = torch.zeros(4, 4) if name == "y.w" else torch.randn(4, 4)
    state.capture(params)
    with pytest.raises(SpiderError, match="no gradient observed for y.w"):
        state.apply(params)
