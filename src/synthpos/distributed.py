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

import itertools
import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["GlobalBatchNorm", "all_reduce_sum", "convert_global_batchnorm", "default_device", "gather", "is_distributed", "launched_world_size", "rank", "rank_offset", "wait_for_launched_processes", "world_size"]


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


class _AllReduceSum(torch.autograd.Function):
    """``all_reduce(SUM)`` whose backward is also a sum over ranks (every rank's output depends on every input)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over ranks, differentiable (see :func:`gather` for the gradient convention)."""
    return _AllReduceSum.apply(tensor) if world_size() > 1 else tensor


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch over all ranks, on any backend.

    ``torch.nn.SyncBatchNorm`` runs only on GPUs; this one all-reduces the per-channel
    sums (with gradient) over gloo as well, so a CPU run on N processes normalises
    exactly like one process on the concatenated batch. Outside training, or with a
    single process, it is a plain BatchNorm. Input: (N, C) or (N, C, ...).
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected (N, C, ...) input; got {tuple(input.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64)
        dist.all_reduce(count)
        n = float(count.item())
        xf = x.float()
        mean = all_reduce_sum(xf.sum(dims)) / n
        var = all_reduce_sum(((xf - mean.view(shape)) ** 2).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / max(n - 1, 1), alpha=m)
        y = (xf - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_global_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Replace every BatchNorm layer of ``module`` by a :class:`GlobalBatchNorm` with the same state."""
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        # The same Parameter objects (and so their requires_grad: a frozen momentum copy stays frozen).
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_global_batchnorm(child))
    return module


def default_device() -> torch.device:
    """This process's GPU (``LOCAL_RANK`` under torchrun), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def launched_world_size() -> int:
    """How many processes a launcher started for this job; 1 when none did.

    ``$WORLD_SIZE`` when ``$RANK`` and a rendezvous address (``$MASTER_ADDR``,
    ``$MASTER_PORT``) are also set, as torchrun sets them, so that a ``WORLD_SIZE``
    left in the environment alone does not make a process wait for others.
    """
    if not all(os.environ.get(key) for key in ("RANK", "MASTER_ADDR", "MASTER_PORT")):
        return 1
    return int(os.environ.get("WORLD_SIZE", "1"))


_barriers = itertools.count()


def wait_for_launched_processes(name: str, timeout: timedelta = timedelta(days=7)) -> None:
    """Barrier over the processes a launcher started; returns at once in a single process.

    Uses the process group when one is initialised; otherwise forms a gloo group for
    the barrier alone and destroys it. That group's keys in the rendezvous store live
    under their own prefix: torchrun's store outlives a group, and a later default group
    (Lightning's, when ``synthpos run`` goes on to pretrain) would otherwise find the
    stale addresses of this one and fail to connect.

    Args:
        name: what is being waited for; every process must pass the same name, in the
            same order of calls.
        timeout: how long a process may wait for the slowest one. Long by default: the
            ranks of a resumed generation can have very different amounts of work left,
            and a rank that dies makes the launcher stop the others anyway.
    """
    call = next(_barriers)
    if is_distributed():
        dist.barrier()
        return
    size = launched_world_size()
    if size <= 1:
        return
    process = int(os.environ["RANK"])
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")  # a restarted worker must not meet old keys
    store, _, _ = next(dist.rendezvous("env://", process, size, timeout=timeout))
    prefixed = dist.PrefixStore(f"synthpos/{name}/{attempt}/{call}", store)
    dist.init_process_group("gloo", store=prefixed, rank=process, world_size=size, timeout=timeout)
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()
