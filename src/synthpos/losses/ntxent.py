"""NT-Xent (normalised temperature-scaled cross-entropy), the SimCLR loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from synthpos import distributed
from synthpos.losses._common import TemperatureLoss, check_extra_negatives, extra_logits
from synthpos.losses.quality import _check_weights

__all__ = ["NTXentLoss"]


def _check_pair(name0: str, x0: torch.Tensor, name1: str, x1: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``x0`` and ``x1`` are both (N, D) with N, D >= 1."""
    for name, x in ((name0, x0), (name1, x1)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape (N, D); got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(f"{name} must have shape (N, D); got {tuple(x.shape)}")
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"{name} must have shape (N, D) with N, D >= 1; got {tuple(x.shape)}")
    if x0.shape != x1.shape:
        raise ValueError(
            f"{name0} and {name1} must have the same shape; got {tuple(x0.shape)} and {tuple(x1.shape)}"
        )


class NTXentLoss(TemperatureLoss):
    """SimCLR's NT-Xent loss over two views of a batch.

    Each of the 2N projections is an anchor; its positive is the other view
    of the same image and its negatives are the remaining 2N - 2 projections
    (2 * world_size * N - 2 with ``gather_distributed``). Similarities are
    cosine similarities divided by ``temperature``; the loss is the
    cross-entropy of picking the positive, averaged over the 2N local anchors.
    Numerically equal to ``lightly.loss.NTXentLoss(temperature,
    memory_bank_size=0, gather_distributed=...)``.

    Args:
        temperature: Softmax temperature (> 0). SimCLR uses 0.5 for small
            batches and 0.1-0.2 for large ones.
        gather_distributed: Take negatives from all ranks (via
            :func:`synthpos.distributed.gather`, which keeps gradients). Under
            DDP with equal per-rank batches this trains exactly like one
            process on the global batch. Has no effect when not distributed.

    Raises:
        ValueError: If ``temperature`` is not positive, or
            ``gather_distributed`` is set but ``torch.distributed`` is not
            available.

    Shape:
        - out0: (N, D) projections of the first view.
        - out1: (N, D) projections of the second view; row i is the positive of
          ``out0[i]``.
        - weights: optional (N,) per-pair weights (GenView's quality weights).
        - output: scalar.

    Example:
        >>> loss_fn = NTXentLoss(temperature=0.5)
        >>> z0, z1 = model(view0), model(view1)  # (N, D) each
        >>> loss = loss_fn(z0, z1)
        >>> loss.backward()
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = False) -> None:
        super().__init__(temperature, gather_distributed)

    def forward(
        self, out0: torch.Tensor, out1: torch.Tensor, weights: torch.Tensor | None = None,
        extra_negatives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            out0: Projections of the first view. Shape: (N, D).
            out1: Projections of the second view. Shape: (N, D).
            weights: Optional per-pair weights, used detached. Both anchors of
                pair i (``out0[i]`` and ``out1[i]``) get ``weights[i]``. Shape: (N,).
            extra_negatives: Optional negatives of each anchor alone (MoCHi's
                synthetic hard negatives), rows in anchor order ``out0`` then
                ``out1``, appended to its logits (normalised here; a gradient
                flows only where they carry one). Shape: (2N, S, D).

        Returns:
            Scalar loss, averaged over the 2N local anchors (each multiplied by
            its pair's weight when ``weights`` is given).

        Raises:
            ValueError: If the inputs are not two (N, D) tensors of equal shape,
                or ``weights`` is not a floating tensor of shape (N,).
        """
        _check_pair("out0", out0, "out1", out1)
        weights = _check_weights(weights, out0.shape[0])
        n = out0.shape[0]
        check_extra_negatives(extra_negatives, 2 * n, out0.shape[1])
        out0 = F.normalize(out0, dim=1)
        out1 = F.normalize(out1, dim=1)

        if self.gather_distributed:
            all0 = distributed.gather(out0)
            all1 = distributed.gather(out1)
            offset = distributed.rank_offset(n)
        else:
            all0, all1, offset = out0, out1, 0
        m = all0.shape[0]  # world_size * N

        # Anchors are the local rows of both views; candidates are all rows
        # of both views: view-0 rows at [0, m), view-1 rows at [m, 2m).
        anchors = torch.cat([out0, out1], dim=0)  # (2N, D)
        candidates = torch.cat([all0, all1], dim=0)  # (2m, D)
        logits = anchors @ candidates.T / self.temperature  # (2N, 2m)

        local = torch.arange(n, device=out0.device) + offset
        self_index = torch.cat([local, local + m])
        positive_index = torch.cat([local + m, local])
        rows = torch.arange(2 * n, device=out0.device)
        # An anchor is never its own negative; -inf drops it from the softmax
        # and gives it zero gradient.
        self_mask = torch.zeros_like(logits, dtype=torch.bool)
        self_mask[rows, self_index] = True
        logits = logits.masked_fill(self_mask, float("-inf"))
        if extra_negatives is not None:
            logits = torch.cat([logits, extra_logits(anchors, extra_negatives, self.temperature)], dim=1)
        if weights is None:
            return F.cross_entropy(logits, positive_index)
        per_anchor = F.cross_entropy(logits, positive_index, reduction="none")  # (2N,)
        return (weights.repeat(2).to(per_anchor) * per_anchor).mean()
