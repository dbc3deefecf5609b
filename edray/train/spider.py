"""SPIDER: forgetting-aware fine-tuning by importance discrepancy (METHOD.md §2).

Per trainable tensor with pre-trained value θ0 and signed gradient sum G:

- ``R(x) = sigmoid((|x| - mean|x|) / std|x|)`` over the tensor;
- ``I_pre = R(θ0)``, ``I_ft = R(G)``;
- ``M = I_ft / (I_pre + I_ft)`` where ``I_ft > I_pre``, else 0; then ``M <- min(1, M / mean(M[M > 0]))``;
- after every optimizer step ``θ <- θ0 ⊙ (1 - M) + θ ⊙ M``.

The math is in pure functions (:func:`importance`, :func:`spider_mask`, :func:`apply_mask`).
:class:`SpiderState` holds only θ0 and G, both fp32 (two extra copies of the trainable weights,
whatever the training dtype); R, I_pre, I_ft and M are recomputed one tensor at a time after each
step and never stored. Unlike the public code, the state is checkpointed (``state_dict``), gradients
are captured after accumulation and clipping but before they are zeroed, and a mask that is empty
because no gradient was seen raises instead of silently freezing the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch


class SpiderError(RuntimeError):
    """SPIDER cannot compute a meaningful mask (typically: no gradient was captured)."""


def importance(x: torch.Tensor) -> torch.Tensor:
    """Relative importance ``R(x) = sigmoid((|x| - mean|x|) / std|x|)`` over the whole tensor, in fp32.

    ``std`` is the unbiased sample standard deviation (``torch.std``). Guards: an all-zero tensor
    has importance 0 everywhere; a tensor whose magnitudes are all equal (a one-element tensor
    included) has no spread to standardize by, so every non-zero entry gets ``sigmoid(0) = 0.5``.

    Args:
        x: any tensor (bf16 and fp16 are promoted to fp32).

    Returns:
        An fp32 tensor of ``x``'s shape with values in ``[0, 1)``.
    """
    a = x.detach().float().abs()
    if a.numel() == 0 or not bool(a.any()):
        return torch.zeros_like(a)
    if a.numel() == 1:
        return torch.full_like(a, 0.5)
    std = a.std()
    if not bool(std > 0) or not bool(torch.isfinite(std)):
        return torch.where(a > 0, torch.full_like(a, 0.5), torch.zeros_like(a))
    return torch.sigmoid((a - a.mean()) / std)


def spider_mask(theta0: torch.Tensor, grad_sum: torch.Tensor, name: str = "tensor") -> torch.Tensor:
    """The update mask M of one tensor.

    Args:
        theta0: the pre-trained value (any float dtype).
        grad_sum: the running signed sum of the tensor's gradients over all optimizer steps so far.
        name: the parameter's name, for the error message.

    Returns:
        An fp32 tensor in ``[0, 1]``: 0 where the entry must return to θ0, 1 where it moves freely.

    Raises:
        SpiderError: ``grad_sum`` is all zero, i.e. no gradient reached this tensor. Applying the
            resulting all-zero mask would silently undo every update (the public code's failure
            under sharded training, METHOD.md §2).
    """
    if not bool(grad_sum.detach().ne(0).any()):
        raise SpiderError(
            f"SPIDER: no gradient observed for {name} (its gradient sum is all zero); the mask would "
            "freeze it entirely. Capture gradients after backward/clipping and before zero_grad, and "
            "check the parameter takes part in the loss."
        )
    i_pre = importance(theta0)
    i_ft = importance(grad_sum)
    m = torch.where(i_ft > i_pre, i_ft / (i_pre + i_ft), torch.zeros_like(i_ft))
    nonzero = m > 0
    if bool(nonzero.any()):
        m = torch.clamp(m / m[nonzero].mean(), max=1.0)
    return m


def apply_mask(theta: torch.Tensor, theta0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``θ0 ⊙ (1 - M) + θ ⊙ M`` computed in fp32, returned in ``theta``'s dtype."""
    t0 = theta0.float()
    return (t0 + (theta.detach().float() - t0) * mask).to(theta.dtype)


class SpiderState:
    """θ0 and the signed gradient sum G for a set of named trainable tensors, in fp32.

    Typical loop::

        state = SpiderState.from_parameters(named_trainable)
        loss.backward(); clip_grad_norm_(...)
        state.capture(named_trainable)          # after accumulation and clipping
        optimizer.step(); optimizer.zero_grad()
        densities = state.apply(named_trainable)  # restore masked entries to θ0

    Args:
        theta0: name -> pre-trained value (copied to fp32, on the tensor's device).
    """

    def __init__(self, theta0: Mapping[str, torch.Tensor]) -> None:
        self.theta0: dict[str, torch.Tensor] = {
            k: v.detach().to(dtype=torch.float32, copy=True) for k, v in theta0.items()
        }
        self.grad_sum: dict[str, torch.Tensor] = {k: torch.zeros_like(v) for k, v in self.theta0.items()}
        self.steps = 0

    @classmethod
    def from_parameters(cls, named: Iterable[tuple[str, torch.Tensor]]) -> "SpiderState":
        """Start from the current values of the given parameters (taken as θ0)."""
        return cls({n: p for n, p in named})

    def capture(self, named: Iterable[tuple[str, torch.nn.Parameter]]) -> None:
        """Add the current gradients to G. Call once per optimizer step, before ``zero_grad``.

        Raises:
            SpiderError: a tracked parameter has no gradient.
            KeyError: a parameter is not tracked.
        """
        seen = 0
        for name, p in named:
            if name not in self.grad_sum:
                raise KeyError(f"SPIDER: parameter {name} is not tracked by this state")
            if p.grad is None:
                raise SpiderError(
                    f"SPIDER: {name} has no gradient at capture time (captured after zero_grad, or "
                    "the parameter is not used by the loss)"
                )
            self.grad_sum[name].add_(p.grad.detach().float())
            seen += 1
        if seen != len(self.grad_sum):
            raise SpiderError(f"SPIDER: captured {seen} of {len(self.grad_sum)} tracked tensors")
        self.steps += 1

    @torch.no_grad()
    def apply(self, named: Iterable[tuple[str, torch.nn.Parameter]]) -> dict[str, tuple[int, int]]:
        """Restore masked entries to θ0 in place (one tensor at a time: nothing but θ0 and G is kept).

        Returns:
            name -> ``(entries with M > 0, entries)`` for density metrics.

        Raises:
            SpiderError: no step was captured yet, or a tensor's gradient sum is all zero.
        """
        if self.steps == 0:
            raise SpiderError("SPIDER: apply() before any gradient was captured")
        out = {}
        for name, p in named:
            mask = spider_mask(self.theta0[name], self.grad_sum[name], name)
            p.copy_(apply_mask(p, self.theta0[name], mask))
            out[name] = (int((mask > 0).sum()), mask.numel())
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors for safetensors: ``theta0.<name>``, ``grad_sum.<name>`` and ``steps``."""
        sd: dict[str, torch.Tensor] = {}
        for k in self.theta0:
            sd[f"theta0.{k}"] = self.theta0[k].contiguous()
            sd[f"grad_sum.{k}"] = self.grad_sum[k].contiguous()
        sd["steps"] = torch.tensor([self.steps], dtype=torch.int64)
        return sd

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], device: torch.device | str | None = None) -> "SpiderState":
        """Rebuild a state saved by :meth:`state_dict`.

        Raises:
            KeyError: the dict lacks ``steps`` or a tensor's ``grad_sum`` entry.
        """
        theta0 = {k[len("theta0."):]: v for k, v in sd.items() if k.startswith("theta0.")}
        state = cls({k: v.to(device) if device is not None else v for k, v in theta0.items()})
        for k in state.grad_sum:
            g = sd[f"grad_sum.{k}"]
            state.grad_sum[k] = g.detach().to(dtype=torch.float32, device=state.theta0[k].device, copy=True)
        state.steps = int(sd["steps"].reshape(-1)[0])
        return state

    def extra_bytes(self) -> int:
        """Bytes held by the state (θ0 + G)."""
        return sum(t.numel() * t.element_size() for t in (*self.theta0.values(), *self.grad_sum.values()))
