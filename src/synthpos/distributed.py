"""Small helpers for data-parallel training with ``torch.distributed``.

Every function degrades to the single-process behaviour when
``torch.distributed`` is unavailable or not initialised, so losses can call
them unconditionally.

The important one is :func:`gather`: an ``all_gather`` that carries gradients
correctly. Contrastive losses need negatives from every rank; a naive gather
either cuts the gradient (``dist.all_gather`` is not differentiable) or passes
back only the gradient this rank's own loss produced for its slice, silently
dropping what the other ranks' losses contributed (lightly#1528,
solo-learn#206). Here the backward sums the gradient across ranks first, so
that DDP, which *averages* parameter gradients over ranks, trains the same
model as one process on the concatenated batch with the loss averaged over the
global batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = ["gather", "is_distributed", "rank", "rank_offset", "world_size"]


def is_distributed() -> bool:
    """Whether ``torch.distributed`` is available and a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group; 1 when not distributed."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Rank of this process in the default group; 0 when not distributed."""
    return dist.get_rank() if is_distributed() else 0


def rank_offset(local_batch: int) -> int:
    """Index of this rank's first sample in a tensor returned by :func:`gather`.

    Args:
        local_batch: Number of samples each rank contributes (the same on all ranks).

    Returns:
        ``rank() * local_batch``; add it to local indexes to address this rank's
        rows (e.g. its positives) inside the gathered tensor.
    """
    return rank() * local_batch


class _GatherWithGrad(torch.autograd.Function):
    """``all_gather`` along dim 0 whose backward sums gradients across ranks."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        tensor = tensor.contiguous()
        ctx.local_size = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # Every rank's loss may depend on this rank's rows, but each rank only
        # sees the gradient of its own loss. Summing over ranks gives this
        # rank the gradient of the *sum* of all ranks' losses w.r.t. its rows;
        # DDP's averaging then turns that into the gradient of the mean loss.
        # clone(): all_reduce works in place and grad_output may be shared.
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.local_size
        return grad[start : start + ctx.local_size]


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, keeping gradients.

    The forward returns ``cat([t_0, t_1, ..., t_{W-1}])`` in rank order. The
    backward all-reduces (sums) the incoming gradient over ranks and returns
    this rank's slice. Identity when not distributed (or world size 1).

    All ranks must call it collectively with tensors of identical shape, dtype
    and device.

    Args:
        tensor: This rank's tensor. Shape: (N, ...).

    Returns:
        The gathered tensor. Shape: (world_size * N, ...); rows
        ``rank_offset(N) : rank_offset(N) + N`` are this rank's ``tensor``.

    Raises:
        ValueError: If ``tensor`` is 0-dimensional.

    Example:
        >>> z = model(x)                     # (N, D) on every rank
        >>> z_all = gather(z)                # (world_size * N, D)
        >>> mine = z_all[rank_offset(len(z)) : rank_offset(len(z)) + len(z)]
    """
    if tensor.dim() == 0:
        raise ValueError("gather() needs a tensor with at least one dimension; got a 0-d tensor")
    if world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)
