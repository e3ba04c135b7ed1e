"""Ring buffers of embeddings: MoCo's queue of negatives and NNCLR's support set.

Both hold L2-normalised vectors in a registered buffer (so they are saved in
checkpoints and move with ``.to(device)``) and are filled from the keys of
every rank, in rank order, so that all ranks hold the same content.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from synthpos import distributed

__all__ = ["MemoryQueue", "NearestNeighbourSupport"]


class MemoryQueue(nn.Module):
    """A first-in-first-out ring buffer of ``size`` unit vectors (MoCo's queue).

    It starts with random unit vectors (as in MoCo). :meth:`enqueue` gathers
    the keys of all ranks (without gradient), concatenates them in rank order,
    L2-normalises them and writes them at the pointer, wrapping around at the
    end; the pointer then moves past them. ``size`` need not be a multiple of
    the global batch. When one global batch has more keys than ``size``, only
    its last ``size`` keys are kept, as if written one by one.

    The random start uses the global RNG: seed all ranks the same (DDP also
    broadcasts rank 0's buffers) so that the ranks' queues agree.

    Args:
        size: Number of stored vectors Q (>= 1).
        dim: Dimension D of each vector (>= 1).

    Raises:
        ValueError: If ``size`` or ``dim`` is below 1.

    Shape:
        - queue: (Q, D), the current content (a copy).
        - enqueue keys: (N, D) this rank's keys.

    Example:
        >>> queue = MemoryQueue(size=65536, dim=128)
        >>> loss = MoCoLoss(0.2)(q, k, queue.queue)
        >>> queue.enqueue(k)
    """

    bank: torch.Tensor
    pointer: torch.Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"MemoryQueue needs size >= 1 and dim >= 1; got size={size}, dim={dim}")
        self.size = int(size)
        self.dim = int(dim)
        self.register_buffer("bank", F.normalize(torch.randn(self.size, self.dim), dim=1))
        # Index of the slot the next key goes to.
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"

    @property
    def queue(self) -> torch.Tensor:
        """The stored vectors in slot order (the oldest is at the pointer). Shape: (Q, D).

        A detached copy: a loss that used it can still be backpropagated after
        a later :meth:`enqueue`, which writes the buffer in place.
        """
        return self.bank.detach().clone()

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write the keys of all ranks (rank order) at the pointer.

        Collective when distributed: every rank must call it with keys of the
        same shape.

        Args:
            keys: This rank's keys; normalised before storing. Shape: (N, D).

        Raises:
            ValueError: If ``keys`` is not (N, D) with N >= 1 and this queue's D.
        """
        if not isinstance(keys, torch.Tensor) or keys.dim() != 2 or keys.shape[1] != self.dim or len(keys) < 1:
            shape = tuple(keys.shape) if isinstance(keys, torch.Tensor) else type(keys).__name__
            raise ValueError(f"keys must have shape (N, {self.dim}) with N >= 1; got {shape}")
        keys = keys.detach().to(self.bank)
        if distributed.is_distributed() and distributed.world_size() > 1:
            parts = [torch.empty_like(keys) for _ in range(distributed.world_size())]
            dist.all_gather(parts, keys.contiguous())
            keys = torch.cat(parts, dim=0)
        keys = F.normalize(keys, dim=1)

        count = keys.shape[0]
        pointer = int(self.pointer)
        if count > self.size:
            # Only the last `size` keys would survive writing them one by one;
            # skipping the rest keeps the slot indexes below unique.
            pointer = (pointer + count - self.size) % self.size
            keys = keys[count - self.size :]
        slots = (pointer + torch.arange(keys.shape[0], device=self.bank.device)) % self.size
        self.bank[slots] = keys
        self.pointer.fill_((int(self.pointer) + count) % self.size)


class NearestNeighbourSupport(MemoryQueue):
    """NNCLR's support set: a :class:`MemoryQueue` with nearest-neighbour lookup.

    NNCLR (Dwibedi et al., ICCV 2021) replaces each projection by its nearest
    neighbour in a queue of past projections before the contrastive loss.
    Entries are stored L2-normalised, so the neighbour is returned as a unit
    vector (the contrastive losses normalise anyway).

    Args:
        size: Number of stored vectors (>= 1); NNCLR uses 98304.
        dim: Dimension of each vector (>= 1).

    Raises:
        ValueError: If ``size`` or ``dim`` is below 1.

    Shape:
        - nearest z: (N, D) -> (N, D).

    Example:
        >>> support = NearestNeighbourSupport(size=8192, dim=256)
        >>> nn0 = support.nearest(z0)
        >>> loss = NTXentLoss(0.1)(nn0, p1)
        >>> support.enqueue(z0)
    """

    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """The stored vector of highest cosine similarity to each row of ``z``.

        Args:
            z: Query vectors. Shape: (N, D).

        Returns:
            The nearest stored unit vectors (in ``z``'s dtype), without
            gradient. Shape: (N, D).

        Raises:
            ValueError: If ``z`` is not (N, D) with this support set's D.
        """
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.dim:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z must have shape (N, {self.dim}); got {shape}")
        similarity = F.normalize(z.detach().to(self.bank), dim=1) @ self.bank.T  # (N, Q)
        return self.bank[similarity.argmax(dim=1)].to(z.dtype)
