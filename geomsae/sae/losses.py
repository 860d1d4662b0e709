"""Loss pieces shared by the SAE architectures: reconstruction, AuxK, JumpReLU's straight-through
estimators, and the per-step context (sparsity coefficient, dead features, cross-process
collectives).

All losses are means over the local batch, so averaging gradients over equal-sized shards of a
global batch (data parallel) gives exactly the single-process gradient; batch statistics that are
not per-sample (AuxK's residual variance) are summed across processes through
:attr:`StepContext.reduce_sum`, and BatchTopK selects over the global batch through
:attr:`StepContext.all_gather`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


def _identity(t: Tensor) -> Tensor:
    return t


@dataclass(frozen=True)
class StepContext:
    """Per-step inputs of :meth:`SAE.training_step` that are not the batch.

    Attributes
    ----------
    sparsity_coefficient : float
        L1 (or JumpReLU L0) coefficient after warm-up.
    dead : Tensor of bool, shape (d_sae,), optional
        Features that have not fired for ``dead_tokens`` samples (AuxK).
    reduce_sum, reduce_min : callable
        Sum / minimum of a tensor over data-parallel processes (identity in one process).
    all_gather : callable
        Every process's tensor (same shape on all) concatenated along dim 0 in rank order
        (identity in one process).
    world_size : int
        Number of data-parallel processes (1 in one process).
    """

    sparsity_coefficient: float = 0.0
    dead: Tensor | None = None
    reduce_sum: Callable[[Tensor], Tensor] = _identity
    reduce_min: Callable[[Tensor], Tensor] = _identity
    all_gather: Callable[[Tensor], Tensor] = _identity
    world_size: int = 1


def reconstruction_loss(x: Tensor, x_hat: Tensor) -> Tensor:
    """mean_i ||x_i - x_hat_i||^2 (SAELens' un-normalised MSE)."""
    return (x_hat.float() - x.float()).pow(2).sum(-1).mean()


def total_variance(e: Tensor, ctx: StepContext) -> Tensor:
    """Mean over all processes' samples of ||e_i - mean(e)||^2 (a scalar, no gradient)."""
    e = e.detach()
    packed = torch.cat([e.sum(0), e.pow(2).sum()[None], e.new_tensor([e.shape[0]])]).double()
    packed = ctx.reduce_sum(packed)
    n = packed[-1]
    mean = packed[:-2] / n
    return (packed[-2] / n - mean.pow(2).sum()).clamp_min(1e-12).float()


def auxk_loss(e: Tensor, e_hat: Tensor, ctx: StepContext) -> Tensor:
    """AuxK (Gao et al. 2024): dead features reconstruct the residual ``e``; normalised by its
    variance, so 1 means no better than predicting the mean."""
    return (e_hat.float() - e.float()).pow(2).sum(-1).mean() / total_variance(e, ctx)


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, theta, bandwidth):  # noqa: D102
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        pre, theta = ctx.saved_tensors
        bw = ctx.bandwidth
        grad_pre = g * (pre > theta).to(g.dtype)
        grad_theta = -(theta / bw) * _rectangle((pre - theta) / bw) * g
        return grad_pre, grad_theta.sum_to_size(theta.shape), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, theta, bandwidth):  # noqa: D102
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        pre, theta = ctx.saved_tensors
        bw = ctx.bandwidth
        grad_theta = -(1.0 / bw) * _rectangle((pre - theta) / bw) * g
        return None, grad_theta.sum_to_size(theta.shape), None


def jumprelu(pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    """``pre * H(pre - theta)``; d/dtheta by the rectangle-kernel pseudo-derivative
    ``-(theta / eps) K((pre - theta) / eps)`` (Rajamanoharan et al. 2024, eq. 11). ``theta`` is
    (d_sae,) for ``pre`` of shape (n, d_sae), or per entry (same shape as ``pre``)."""
    return _JumpReLU.apply(pre, theta, bandwidth)


def jumprelu_l0(pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    """``H(pre - theta)`` with pseudo-derivative ``-(1 / eps) K((pre - theta) / eps)`` in theta
    (no gradient to ``pre``), shape of ``pre``."""
    return _Step.apply(pre, theta, bandwidth)
