"""InfoNCE with any number of positives per anchor: multi-view SSL and SupCon.

Positives are defined by an id per row (solo-learn's instance indexes): rows
that share an id are positives of each other, every other row is a negative.
With ids = image indexes, any number of real or synthetic views of an image
are contrasted in one loss; with ids = class labels, it is SupCon.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from synthpos import distributed
from synthpos.losses._common import TemperatureLoss

__all__ = ["MultiPositiveInfoNCELoss", "SupConLoss"]


class MultiPositiveInfoNCELoss(TemperatureLoss):
    """Multi-positive InfoNCE over rows grouped by id (SupCon's ``L_out``).

    Every row of ``z`` is an anchor. For anchor a, its positives P(a) are the
    other rows with the same id; all rows but a itself form the denominator:

        loss_a = -1/|P(a)| * sum_{p in P(a)} log( exp(s_ap / T) / sum_{j != a} exp(s_aj / T) )

    with s the cosine similarity. The loss is the mean of ``loss_a`` over
    anchors with at least one positive (0 if there are none). With two views,
    ``z = cat([z0, z1])`` and ``ids = cat([arange(N), arange(N)])``, it equals
    :class:`~synthpos.losses.NTXentLoss`.

    With ``gather_distributed``, rows and ids of all ranks are the candidates
    (gathered with gradient by :func:`synthpos.distributed.gather`), the
    anchors are this rank's rows, and the sum over local anchors is divided by
    the global number of anchors with a positive over ``world_size``: then the
    mean of the per-rank losses is the global-batch loss even when ranks have
    different numbers of valid anchors, and DDP trains exactly like one
    process on the concatenated batch.

    Args:
        temperature: Softmax temperature (> 0).
        gather_distributed: Take candidates from all ranks. Has no effect
            when not distributed.

    Raises:
        ValueError: If ``temperature`` is not positive, or
            ``gather_distributed`` is set but ``torch.distributed`` is not
            available.

    Shape:
        - z: (M, D) projections of all views (real and synthetic), stacked.
        - ids: (M,) integer id of each row (image index, or class label).
        - output: scalar.

    Example:
        >>> loss_fn = MultiPositiveInfoNCELoss(temperature=0.1)
        >>> z = model(torch.cat([view0, view1, synthetic]))  # (3N, D)
        >>> ids = torch.arange(N).repeat(3)
        >>> loss = loss_fn(z, ids)
    """

    _ids_name = "instance"

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = False) -> None:
        super().__init__(temperature, gather_distributed)

    def forward(self, z: torch.Tensor, instance: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            z: Projections, one row per view. Shape: (M, D).
            instance: Id of each row; rows with equal ids are positives. Shape: (M,).

        Returns:
            Scalar loss, averaged over the anchors that have a positive.

        Raises:
            ValueError: If ``z`` is not (M, D) with M, D >= 1, or the ids are
                not an integer tensor of shape (M,).
        """
        return self._loss(z, instance)

    def _loss(self, z: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        name = self._ids_name
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[0] < 1 or z.shape[1] < 1:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z must have shape (M, D) with M, D >= 1; got {shape}")
        if not isinstance(ids, torch.Tensor) or ids.shape != (z.shape[0],):
            shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise ValueError(f"{name} must have shape ({z.shape[0]},), one id per row of z; got {shape}")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor; got {ids.dtype}")

        m = z.shape[0]
        z = F.normalize(z, dim=1)
        ids = ids.to(device=z.device, dtype=torch.long)
        if self.gather_distributed and distributed.world_size() > 1:
            z_all = distributed.gather(z)
            ids_all = distributed.gather(ids)
            offset = distributed.rank_offset(m)
        else:
            z_all, ids_all, offset = z, ids, 0

        logits = z @ z_all.T / self.temperature  # (M, world_size * M)
        rows = torch.arange(m, device=z.device)
        self_mask = torch.zeros_like(logits, dtype=torch.bool)
        self_mask[rows, rows + offset] = True
        # -inf drops the anchor itself from its own softmax denominator.
        log_prob = F.log_softmax(logits.masked_fill(self_mask, float("-inf")), dim=1)
        positive_mask = (ids.unsqueeze(1) == ids_all.unsqueeze(0)) & ~self_mask
        positive_count = positive_mask.sum(dim=1)
        # masked_fill, not a product: the -inf on the diagonal times 0 is NaN.
        positive_log_prob = log_prob.masked_fill(~positive_mask, 0.0).sum(dim=1)
        per_anchor = -positive_log_prob / positive_count.clamp(min=1)  # (M,)
        has_positive = positive_count > 0
        total = per_anchor.masked_fill(~has_positive, 0.0).sum()

        count = has_positive.sum()
        if self.gather_distributed and distributed.world_size() > 1:
            # Normalise by the global count so the per-rank losses average to
            # the global-batch loss whatever their own counts are.
            count = count.clone()
            dist.all_reduce(count, op=dist.ReduceOp.SUM)
            return total * distributed.world_size() / count.clamp(min=1)
        return total / count.clamp(min=1)


class SupConLoss(MultiPositiveInfoNCELoss):
    """Supervised contrastive loss (Khosla et al., NeurIPS 2020, ``L_out``).

    :class:`MultiPositiveInfoNCELoss` with class labels as ids: every row with
    the same label (other than the anchor) is a positive. Stack all views of
    the batch and repeat the labels accordingly. The original code's factor
    ``temperature / base_temperature`` is 1 with its defaults and is left out.

    Args:
        temperature: Softmax temperature (> 0); the paper uses 0.1.
        gather_distributed: Take candidates (and their labels) from all ranks.

    Raises:
        ValueError: If ``temperature`` is not positive, or
            ``gather_distributed`` is set but ``torch.distributed`` is not
            available.

    Shape:
        - z: (M, D) projections of all views, stacked.
        - labels: (M,) class label of each row.
        - output: scalar.

    Example:
        >>> loss_fn = SupConLoss(temperature=0.1)
        >>> z = model(torch.cat([view0, view1]))
        >>> loss = loss_fn(z, labels.repeat(2))
    """

    _ids_name = "labels"

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Compute the loss.

        Args:
            z: Projections, one row per view. Shape: (M, D).
            labels: Class label of each row. Shape: (M,).

        Returns:
            Scalar loss, averaged over the anchors that have a positive.

        Raises:
            ValueError: If ``z`` is not (M, D) with M, D >= 1, or ``labels``
                is not an integer tensor of shape (M,).
        """
        return self._loss(z, labels)
