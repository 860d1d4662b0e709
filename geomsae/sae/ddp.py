"""Data-parallel helpers over ``torch.distributed`` (launch with ``torchrun``).

Every process reads the same global batch and trains on its own contiguous slice; gradients are
averaged with one all-reduce per step, so with equal slices the update equals the single-process
one up to floating-point summation order. Batch statistics that are not per-sample (AuxK's residual
variance, fired features, BatchTopK's selection threshold and its inference threshold) are reduced
or gathered explicitly. Works with the ``gloo`` backend on CPU and ``nccl`` on CUDA.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Rank and world size of this process (0 and 1 without torch.distributed)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: torch.device | None = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Uses ``nccl`` for CUDA devices and ``gloo`` otherwise; a group initialised by the caller is
    reused as it is.
    """
    if not dist.is_available():
        return DistInfo()
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return DistInfo()
        cuda = device is not None and device.type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        logger.info("joined process group: rank %d of %d", dist.get_rank(), dist.get_world_size())
    return DistInfo(dist.get_rank(), dist.get_world_size())


def local_slice(batch: Tensor, info: DistInfo) -> Tensor:
    """This process's contiguous share of a global batch (batch size divisible by world size)."""
    if not info.enabled:
        return batch
    n = batch.shape[0] // info.world_size
    return batch[info.rank * n : (info.rank + 1) * n]


def world_size() -> int:
    """Number of processes in the group (1 without one)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def reduce_sum(t: Tensor) -> Tensor:
    """Sum over processes (a copy; identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def reduce_min(t: Tensor) -> Tensor:
    """Minimum over processes (a copy; identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def all_gather(t: Tensor) -> Tensor:
    """Every process's ``t`` concatenated along dim 0, in rank order (``t`` itself without a
    process group). All processes must pass tensors of the same shape and dtype."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    t = t.contiguous()
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t)
    return torch.cat(parts)


def average_gradients(params: list[Tensor]) -> None:
    """All-reduce and average the gradients of ``params`` in one flat buffer."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def barrier() -> None:
    """Wait for all processes (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
