"""SPIDER: forgetting-aware fine-tuning by importance discrepancy (docs/method.md §2).

Per trainable tensor with pre-trained value θ0 and signed gradient sum G:

- ``R(x) = sigmoid((|x| - mean|x|) / std|x|)`` over the tensor;
- ``I_pre = R(θ0)``, ``I_ft = R(G)``;
- ``M = I_ft / (I_pre + I_ft)`` where ``I_ft > I_pre``, else 0; then ``M <- min(1, M / mean(M[M > 0]))``;
- after every optimizer step ``θ <- θ0 ⊙ (1 - M) + θ ⊙ M``.

The math is in pure functions (:func:`importance`, :func:`spider_mask`, :func:`apply_mask`).
:class:`SpiderState` holds only θ0 and G, both fp32 (two extra copies of the trainable weights,
whatever the training dtype); R, I_pre, I_ft and M are recomputed after each step and never stored.
:meth:`SpiderState.apply` computes them for groups of equal-sized tensors at once (the rows of one
bounded fp32 matrix), because on small models the per-tensor cost is kernel-launch and Python
overhead, not arithmetic; the result is that of the pure functions applied tensor by tensor. Unlike the public code, the state is checkpointed (``state_dict``), gradients
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
            under sharded training, docs/method.md §2).
    """
    _check_gradient(grad_sum, name)
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



# Tensors with the same number of entries are masked together as the rows of one matrix (their cost
# on a small model is per-operation overhead, not arithmetic); a group holds at most _GROUP_NUMEL
# entries (or one tensor, if larger), which bounds the temporaries to a few fp32 buffers that size.
_GROUP_NUMEL = 1 << 22


def _check_gradient(grad_sum: torch.Tensor, name: str) -> None:
    """Raise :class:`SpiderError` when ``grad_sum`` is all zero (no gradient reached the tensor)."""
    if not bool(grad_sum.detach().ne(0).any()):
        raise SpiderError(
            f"SPIDER: no gradient observed for {name} (its gradient sum is all zero); the mask would "
            "freeze it entirely. Capture gradients after backward/clipping and before zero_grad, and "
            "check the parameter takes part in the loss."
        )


def _importance_rows_(a: torch.Tensor) -> torch.Tensor:
    """R of every row of ``a`` (k x n, fp32, already ``|x|``), in place; returns the rows' validity.

    Same formula as :func:`importance`: two-pass mean and unbiased std per row. Rows without a
    usable spread (``std`` zero or not finite: one entry, all equal, all zero, overflow) come out
    meaningless here and are flagged ``False`` in the returned k x 1 bool tensor; the caller
    recomputes them with :func:`importance`'s guards.
    """
    n = a.shape[1]
    a.sub_(a.sum(1, keepdim=True) / n)
    if n > 1:
        std = (a * a).sum(1, keepdim=True).div_(n - 1).sqrt_()
    else:  # the unbiased std of one entry is undefined, as torch.std's NaN
        std = torch.full_like(a[:, :1], float("nan"))
    a.div_(std).sigmoid_()
    return torch.isfinite(std) & (std > 0)


def _blend_(params: list[torch.Tensor], theta0: list[torch.Tensor], mask: list[torch.Tensor]) -> None:
    """``θ <- θ0 + M ⊙ (θ - θ0)`` in place for a list of tensors, in fp32 (as :func:`apply_mask`)."""
    fp32 = [i for i, p in enumerate(params) if p.dtype == torch.float32]
    other = [i for i, p in enumerate(params) if p.dtype != torch.float32]
    if fp32:
        ps = [params[i] for i in fp32]
        t0 = [theta0[i] for i in fp32]
        torch._foreach_sub_(ps, t0)
        torch._foreach_mul_(ps, [mask[i] for i in fp32])
        torch._foreach_add_(ps, t0)
    if other:
        t0 = [theta0[i] for i in other]
        tmp = [params[i].float() for i in other]
        torch._foreach_sub_(tmp, t0)
        torch._foreach_mul_(tmp, [mask[i] for i in other])
        torch._foreach_add_(tmp, t0)
        torch._foreach_copy_([params[i] for i in other], tmp)


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

    @torch.no_grad()
    def capture(self, named: Iterable[tuple[str, torch.nn.Parameter]]) -> None:
        """Add the current gradients to G. Call once per optimizer step, before ``zero_grad``.

        Raises:
            SpiderError: a tracked parameter has no gradient.
            KeyError: a parameter is not tracked.
        """
        sums: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        for name, p in named:
            if name not in self.grad_sum:
                raise KeyError(f"SPIDER: parameter {name} is not tracked by this state")
            if p.grad is None:
                raise SpiderError(
                    f"SPIDER: {name} has no gradient at capture time (captured after zero_grad, or "
                    "the parameter is not used by the loss)"
                )
            sums.append(self.grad_sum[name])
            grads.append(p.grad.detach().float())
        if len(sums) != len(self.grad_sum):
            raise SpiderError(f"SPIDER: captured {len(sums)} of {len(self.grad_sum)} tracked tensors")
        # one batched add instead of one kernel launch per tensor
        torch._foreach_add_(sums, grads)
        self.steps += 1

    @torch.no_grad()
    def apply(self, named: Iterable[tuple[str, torch.nn.Parameter]]) -> dict[str, tuple[int, int]]:
        """Restore masked entries to θ0 in place.

        Tensors with the same number of entries are processed together, as the rows of one fp32
        matrix of at most ``_GROUP_NUMEL`` entries (one tensor if larger), so that the mask costs a
        fixed number of batched operations per group instead of per tensor. The only temporaries
        are a few such matrices; nothing but θ0 and G outlives the call. The result is that of
        :func:`spider_mask` and :func:`apply_mask` tensor by tensor.

        Returns:
            name -> ``(entries with M > 0, entries)`` for density metrics.

        Raises:
            SpiderError: no step was captured yet, or a tensor's gradient sum is all zero.
            KeyError: a parameter is not tracked.
        """
        if self.steps == 0:
            raise SpiderError("SPIDER: apply() before any gradient was captured")
        by_size: dict[tuple[torch.device, int], list[tuple[str, torch.nn.Parameter]]] = {}
        order: list[tuple[str, int]] = []
        for name, p in named:
            if name not in self.theta0:
                raise KeyError(f"SPIDER: parameter {name} is not tracked by this state")
            by_size.setdefault((self.theta0[name].device, p.numel()), []).append((name, p))
            order.append((name, p.numel()))
        names: list[str] = []
        counts: list[torch.Tensor] = []
        for (_, n), members in by_size.items():
            rows = max(1, _GROUP_NUMEL // max(n, 1))
            for i in range(0, len(members), rows):
                group = members[i:i + rows]
                counts.append(self._apply_group(group))
                names.extend(name for name, _ in group)
        # one host sync for all density counts
        got = dict(zip(names, torch.cat(counts).tolist())) if counts else {}
        return {name: (int(got[name]), n) for name, n in order}

    def _apply_group(self, group: list[tuple[str, torch.nn.Parameter]]) -> torch.Tensor:
        """Mask and blend tensors of equal size; returns their counts of ``M > 0`` (float, k)."""
        names = [name for name, _ in group]
        params = [p for _, p in group]
        theta0 = [self.theta0[name] for name in names]
        grad_sum = [self.grad_sum[name] for name in names]
        i_pre = torch.stack([t.reshape(-1) for t in theta0]).abs_()
        i_ft = torch.stack([g.reshape(-1) for g in grad_sum]).abs_()
        # a row of |G| summing to zero may have seen no gradient: checked exactly below
        g_nonzero = i_ft.sum(1) > 0
        pre_ok = _importance_rows_(i_pre)
        ft_ok = _importance_rows_(i_ft)
        # one host sync per group for the rare rows that need a guard or the no-gradient check
        flags = torch.stack([g_nonzero, pre_ok.reshape(-1), ft_ok.reshape(-1)]).tolist()
        for k, (g_ok, p_ok, f_ok) in enumerate(zip(*flags)):
            if not g_ok:
                _check_gradient(grad_sum[k], names[k])
            if not p_ok:
                i_pre[k] = importance(theta0[k]).reshape(-1)
            if not f_ok:
                i_ft[k] = importance(grad_sum[k]).reshape(-1)
        # M = I_ft / (I_pre + I_ft) where I_ft > I_pre, else 0. Without comparisons or where (slow on
        # CPU): h = 1 exactly where I_ft - I_pre > 0 (exact in IEEE), and where h = 0 the denominator
        # gets +1 so that it cannot be 0 (I_pre = I_ft = 0) while the numerator is 0.
        h = torch.sub(i_ft, i_pre).sign_().clamp_(min=0.0)
        den = i_pre.add_(i_ft).add_(torch.sub(1.0, h))
        m = i_ft.mul_(h).div_(den)
        del den, i_pre
        # M <- min(1, M / mean of its non-zero entries); M > 0 exactly where h = 1 (there M > 1/2)
        count = h.sum(1, keepdim=True, dtype=torch.float64 if m.shape[1] >= 1 << 24 else None)
        del h
        mean_nz = m.sum(1, keepdim=True).div_(count.clamp(min=1.0).to(m.dtype))
        m.div_(torch.where(count > 0, mean_nz, torch.ones_like(mean_nz))).clamp_(max=1.0)
        _blend_(params, theta0, [row.view_as(p) for row, p in zip(m.unbind(0), params)])
        return count.reshape(-1)

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
