"""Barlow Twins: make the cross-correlation of two views the identity."""

from __future__ import annotations

import torch
from torch import nn

from synthpos import distributed
from synthpos.losses._common import check_gather_available
from synthpos.losses.ntxent import _check_pair

__all__ = ["BarlowTwinsLoss"]

# The eps of torch's BatchNorm, which Barlow Twins (and lightly) use to
# standardise each feature over the batch.
_BN_EPS = 1e-5


def _standardise(z: torch.Tensor) -> torch.Tensor:
    """Each column to mean 0 and (biased) variance 1 over the batch. Shape: (N, D)."""
    mean = z.mean(dim=0)
    var = z.var(dim=0, unbiased=False)
    return (z - mean) / torch.sqrt(var + _BN_EPS)


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins loss (Zbontar et al., ICML 2021, Algorithm 1).

    Both views are standardised per feature over the batch; ``C = z_a^T z_b / N``
    is their (D, D) cross-correlation, and the loss is
    ``sum_i (1 - C_ii)^2 + lambda_param * sum_{i != j} C_ij^2``.
    Numerically equal to ``lightly.loss.BarlowTwinsLoss(lambda_param)`` in one
    process.

    With ``gather_distributed`` both views are gathered from every rank (with
    gradient, summed back by :func:`synthpos.distributed.gather`) and every rank
    computes the loss of the *global* batch: standardisation and ``C`` use all
    ``world_size * N`` samples. DDP then averages identical per-rank losses,
    whose summed-back gradients make the step exactly that of one process on
    the concatenated batch. lightly instead standardises each rank's batch on
    its own and averages the per-rank ``C``, which is not the global-batch loss.

    Args:
        lambda_param: Weight of the redundancy-reduction (off-diagonal) term;
            the paper uses 5e-3 (with 8192-d projections).
        gather_distributed: Compute the loss over the samples of all ranks.
            Has no effect when not distributed.

    Raises:
        ValueError: If ``lambda_param`` is negative, or ``gather_distributed``
            is set but ``torch.distributed`` is not available.

    Shape:
        - z_a: (N, D) projections of the first view.
        - z_b: (N, D) projections of the second view.
        - output: scalar.

    Example:
        >>> loss_fn = BarlowTwinsLoss(lambda_param=5e-3)
        >>> loss = loss_fn(model(view0), model(view1))
        >>> loss.backward()
    """

    def __init__(self, lambda_param: float = 5e-3, gather_distributed: bool = False) -> None:
        super().__init__()
        if not lambda_param >= 0:
            raise ValueError(f"lambda_param must be >= 0; got {lambda_param}")
        check_gather_available(gather_distributed)
        self.lambda_param = float(lambda_param)
        self.gather_distributed = bool(gather_distributed)

    def extra_repr(self) -> str:
        return f"lambda_param={self.lambda_param}, gather_distributed={self.gather_distributed}"

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            z_a: Projections of the first view. Shape: (N, D).
            z_b: Projections of the second view. Shape: (N, D).

        Returns:
            Scalar loss (of the global batch with ``gather_distributed``).

        Raises:
            ValueError: If the inputs are not two (N, D) tensors of equal shape,
                or the (global) batch has fewer than 2 samples, so that
                per-feature standardisation is undefined.
        """
        _check_pair("z_a", z_a, "z_b", z_b)
        if self.gather_distributed:
            z_a = distributed.gather(z_a)
            z_b = distributed.gather(z_b)
        n, d = z_a.shape
        if n < 2:
            raise ValueError(f"BarlowTwinsLoss needs a batch of at least 2 samples; got {n}")

        c = _standardise(z_a).T @ _standardise(z_b) / n  # (D, D)
        diagonal = torch.diagonal(c)
        off_diagonal = c.masked_select(~torch.eye(d, dtype=torch.bool, device=c.device))
        invariance = (diagonal - 1).pow(2).sum()
        redundancy = off_diagonal.pow(2).sum()
        return invariance + self.lambda_param * redundancy
