"""MoCo's InfoNCE loss: queries against their keys and a queue of negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from synthpos import distributed
from synthpos.losses._common import TemperatureLoss, check_extra_negatives, extra_logits
from synthpos.losses.ntxent import _check_pair
from synthpos.losses.quality import _check_weights

__all__ = ["MoCoLoss"]


class MoCoLoss(TemperatureLoss):
    """InfoNCE of each query against its key (positive) and negatives.

    All vectors are L2-normalised. With a ``queue`` (MoCo v1/v2/v2+), the
    logits of query i are ``[q_i . k_i, q_i . queue_1, ..., q_i . queue_Q] / T``
    and the target is 0. Without one (MoCo v3), the other keys of the batch are
    the negatives: logits ``q_i . k_j / T`` over all keys j, target i; with
    ``gather_distributed`` the keys of all ranks. The loss is the cross-entropy
    averaged over the N queries. MoCo v3 multiplies it by ``2 * T``; that is
    left to the method.

    Keys usually come from a momentum encoder under ``torch.no_grad``; the
    loss does not detach them, so a key that has a gradient gets one.

    Args:
        temperature: Softmax temperature (> 0); MoCo v2 uses 0.2, v3 0.2 (ViT)
            or 1.0 (ResNet).
        gather_distributed: Without a queue, take the negatives from the keys
            of all ranks (via :func:`synthpos.distributed.gather`). Not used
            with a queue, which already holds keys of all ranks (see
            :class:`synthpos.models.memory.MemoryQueue`).

    Raises:
        ValueError: If ``temperature`` is not positive, or
            ``gather_distributed`` is set but ``torch.distributed`` is not
            available.

    Shape:
        - query: (N, D) predictions/projections of one view (online encoder).
        - key: (N, D) projections of the other view (momentum encoder); row i
          is the positive of ``query[i]``.
        - queue: (Q, D) negatives, or None.
        - weights: optional (N,) per-pair weights (GenView's quality weights).
        - output: scalar.

    Example:
        >>> loss_fn = MoCoLoss(temperature=0.2)
        >>> queue = MemoryQueue(size=4096, dim=128)
        >>> loss = loss_fn(q, k, queue.queue)
        >>> queue.enqueue(k)
    """

    def __init__(self, temperature: float = 0.2, gather_distributed: bool = False) -> None:
        super().__init__(temperature, gather_distributed)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        queue: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        extra_negatives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            query: Queries. Shape: (N, D).
            key: Keys; row i is the positive of ``query[i]``. Shape: (N, D).
            queue: Negatives, or None to use the batch's other keys. Shape: (Q, D).
            weights: Optional per-pair weights, used detached; the loss becomes
                the mean over queries of ``weights[i] * loss_i``. Shape: (N,).
            extra_negatives: Optional negatives of each query alone (MoCHi's
                synthetic hard negatives), appended to its logits as they are
                (normalised here; a gradient flows only where they carry one).
                Shape: (N, S, D).

        Returns:
            Scalar loss, averaged over the N queries.

        Raises:
            ValueError: If ``query`` and ``key`` are not two (N, D) tensors of
                equal shape, ``queue`` is not (Q, D) with Q >= 1 and the same D,
                or ``weights`` is not a floating tensor of shape (N,).
        """
        _check_pair("query", query, "key", key)
        weights = _check_weights(weights, query.shape[0])
        n, d = query.shape
        check_extra_negatives(extra_negatives, n, d)
        q = F.normalize(query, dim=1)
        k = F.normalize(key, dim=1)

        if queue is not None:
            if not isinstance(queue, torch.Tensor) or queue.dim() != 2 or queue.shape[1] != d or len(queue) < 1:
                shape = tuple(queue.shape) if isinstance(queue, torch.Tensor) else type(queue).__name__
                raise ValueError(f"queue must have shape (Q, {d}) with Q >= 1, like query; got {shape}")
            negatives = F.normalize(queue.to(q), dim=1)
            positive = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
            logits = torch.cat([positive, q @ negatives.T], dim=1) / self.temperature  # (N, 1 + Q)
            target = torch.zeros(n, dtype=torch.long, device=q.device)
        else:
            if self.gather_distributed:
                keys = distributed.gather(k)
                offset = distributed.rank_offset(n)
            else:
                keys, offset = k, 0
            logits = q @ keys.T / self.temperature  # (N, world_size * N)
            target = torch.arange(n, device=q.device) + offset
        if extra_negatives is not None:
            logits = torch.cat([logits, extra_logits(q, extra_negatives, self.temperature)], dim=1)

        if weights is None:
            return F.cross_entropy(logits, target)
        per_query = F.cross_entropy(logits, target, reduction="none")  # (N,)
        return (weights.to(per_query) * per_query).mean()
