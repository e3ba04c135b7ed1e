"""Decoupled contrastive learning: DCL and its weighted variant DCLW.

DCL (Yeh et al., ECCV 2022, "Decoupled Contrastive Learning") is NT-Xent with
the positive removed from the denominator: the per-anchor loss is
``-s(i, i') / T + logsumexp over the negatives only``. Without the coupling
between the positive and negative terms, small batches train nearly as well as
large ones. DCLW further scales the positive term by a von Mises-Fisher
weight, ``2 - N * softmax(cos(z_i, z_i') / sigma)``, so that pairs that are
already close pull less.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from synthpos import distributed
from synthpos.losses._common import TemperatureLoss, check_extra_negatives, extra_logits
from synthpos.losses.ntxent import _check_pair
from synthpos.losses.quality import _check_weights

__all__ = ["DCLLoss", "DCLWLoss"]


class DCLLoss(TemperatureLoss):
    """Decoupled contrastive loss over two views of a batch, symmetrised.

    Each of the 2N projections is an anchor. For anchor ``out0[i]`` the
    positive is ``out1[i]``; its negatives are every other projection of both
    views (``out0[j]``, ``out1[j]`` for j != i; from all ranks with
    ``gather_distributed``), and, unlike NT-Xent, the positive is *not* in the
    denominator. The loss is the mean over the 2N local anchors of
    ``-cos(i, i') / T + log sum_{negatives n} exp(cos(i, n) / T)``.
    Numerically equal to ``lightly.loss.DCLLoss(temperature,
    gather_distributed=...)`` (Equation 6 of the paper, both views).

    Args:
        temperature: Softmax temperature (> 0); the paper uses 0.1.
        gather_distributed: Take negatives from all ranks (via
            :func:`synthpos.distributed.gather`, which keeps gradients and sums
            them over ranks). Under DDP with equal per-rank batches this trains
            exactly like one process on the global batch. Has no effect when
            not distributed.

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
        >>> loss_fn = DCLLoss(temperature=0.1)
        >>> loss = loss_fn(model(view0), model(view1))
        >>> loss.backward()
    """

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = False) -> None:
        super().__init__(temperature, gather_distributed)

    def _positive_weights(
        self, all0: torch.Tensor, all1: torch.Tensor, offset: int, n: int
    ) -> torch.Tensor | None:
        """Weights of the positive term for the local pairs; None for plain DCL."""
        return None

    def forward(
        self, out0: torch.Tensor, out1: torch.Tensor, weights: torch.Tensor | None = None,
        extra_negatives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            out0: Projections of the first view. Shape: (N, D).
            out1: Projections of the second view. Shape: (N, D).
            weights: Optional per-pair weights, used detached. Both anchors of
                pair i get ``weights[i]`` (multiplying the whole per-anchor
                loss). Shape: (N,).
            extra_negatives: Optional negatives of each anchor alone (MoCHi's
                synthetic hard negatives), rows in anchor order ``out0`` then
                ``out1``, added to its logsumexp (normalised here).
                Shape: (2N, S, D).

        Returns:
            Scalar loss, averaged over the 2N local anchors.

        Raises:
            ValueError: If the inputs are not two (N, D) tensors of equal shape,
                ``weights`` is not a floating tensor of shape (N,), or the
                (global) batch has fewer than 2 pairs, so that there are no
                negatives.
        """
        _check_pair("out0", out0, "out1", out1)
        weights = _check_weights(weights, out0.shape[0])
        n = out0.shape[0]
        check_extra_negatives(extra_negatives, 2 * n, out0.shape[1])
        extra0, extra1 = (None, None) if extra_negatives is None else extra_negatives.split(n)
        out0 = F.normalize(out0, dim=1)
        out1 = F.normalize(out1, dim=1)

        if self.gather_distributed:
            all0 = distributed.gather(out0)
            all1 = distributed.gather(out1)
            offset = distributed.rank_offset(n)
        else:
            all0, all1, offset = out0, out1, 0
        if all0.shape[0] < 2:
            raise ValueError(
                f"{type(self).__name__} needs a batch of at least 2 pairs (negatives come "
                f"from the other pairs); got {all0.shape[0]}"
            )

        positive_weights = self._positive_weights(all0, all1, offset, n)
        loss0 = self._per_anchor(out0, all0, all1, offset, positive_weights, extra0)  # (N,)
        loss1 = self._per_anchor(out1, all1, all0, offset, positive_weights, extra1)  # (N,)
        if weights is None:
            # The same reduction as lightly, for bit-level agreement.
            return 0.5 * (loss0.mean() + loss1.mean())
        weights = weights.to(loss0)
        return 0.5 * ((weights * loss0).mean() + (weights * loss1).mean())

    def _per_anchor(
        self,
        anchors: torch.Tensor,
        same_view: torch.Tensor,
        other_view: torch.Tensor,
        offset: int,
        positive_weights: torch.Tensor | None,
        extra_negatives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """DCL loss of each local anchor of one view.

        Args:
            anchors: This rank's normalised projections of one view. Shape: (N, D).
            same_view: All ranks' projections of that view. Shape: (M, D).
            other_view: All ranks' projections of the other view. Shape: (M, D).
            offset: Index of this rank's first row in ``same_view``/``other_view``.
            positive_weights: Optional weights of the positive term. Shape: (N,).
            extra_negatives: Optional further negatives of each anchor. Shape: (N, S, D).

        Returns:
            Per-anchor loss. Shape: (N,).
        """
        n = anchors.shape[0]
        rows = torch.arange(n, device=anchors.device)
        own = rows + offset
        sim_same = anchors @ same_view.T / self.temperature  # (N, M)
        sim_other = anchors @ other_view.T / self.temperature  # (N, M)
        positive_loss = -sim_other[rows, own]
        if positive_weights is not None:
            positive_loss = positive_loss * positive_weights
        # The anchor itself and its positive are not negatives: -inf removes
        # them from the logsumexp and gives them zero gradient through it.
        own_mask = torch.zeros_like(sim_same, dtype=torch.bool)
        own_mask[rows, own] = True
        negatives = torch.cat(
            [sim_same.masked_fill(own_mask, float("-inf")), sim_other.masked_fill(own_mask, float("-inf"))],
            dim=1,
        )
        if extra_negatives is not None:
            negatives = torch.cat([negatives, extra_logits(anchors, extra_negatives, self.temperature)], dim=1)
        return positive_loss + torch.logsumexp(negatives, dim=1)


class DCLWLoss(DCLLoss):
    """Weighted decoupled contrastive loss (DCLW), symmetrised.

    :class:`DCLLoss` with the positive term of pair i scaled by the negative
    von Mises-Fisher weight ``w_i = 2 - M * softmax_j(cos(out0[j], out1[j]) / sigma)_i``
    (detached), M the number of pairs. Numerically equal to
    ``lightly.loss.DCLWLoss(temperature, sigma)`` in one process.

    With ``gather_distributed`` the softmax runs over the pairs of *all* ranks
    (lightly uses each rank's own pairs), so that a DDP run computes the same
    weights, and trains the same model, as one process on the global batch.

    Args:
        temperature: Softmax temperature (> 0); the paper uses 0.1.
        sigma: Temperature of the weighting softmax (> 0); the paper uses 0.5.
        gather_distributed: Take negatives and the weighting softmax over all
            ranks (see :class:`DCLLoss`).

    Raises:
        ValueError: If ``temperature`` or ``sigma`` is not positive, or
            ``gather_distributed`` is set but ``torch.distributed`` is not
            available.

    Shape:
        - out0, out1: (N, D) projections of the two views.
        - weights: optional (N,) per-pair weights (GenView's quality weights),
          multiplying each anchor's whole loss on top of the vMF weights.
        - output: scalar.

    Example:
        >>> loss_fn = DCLWLoss(temperature=0.1, sigma=0.5)
        >>> loss = loss_fn(model(view0), model(view1))
    """

    def __init__(self, temperature: float = 0.1, sigma: float = 0.5, gather_distributed: bool = False) -> None:
        super().__init__(temperature=temperature, gather_distributed=gather_distributed)
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0; got {sigma}")
        self.sigma = float(sigma)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sigma={self.sigma}"

    def _positive_weights(
        self, all0: torch.Tensor, all1: torch.Tensor, offset: int, n: int
    ) -> torch.Tensor:
        with torch.no_grad():
            similarity = (all0 * all1).sum(dim=1) / self.sigma  # (M,)
            weights = 2 - all0.shape[0] * torch.softmax(similarity, dim=0)
        return weights[offset : offset + n]
