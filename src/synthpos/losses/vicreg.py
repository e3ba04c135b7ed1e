"""VICReg: variance-invariance-covariance regularisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from synthpos import distributed
from synthpos.losses._common import check_gather_available
from synthpos.losses.ntxent import _check_pair

__all__ = ["VICRegLoss"]


def _variance(z: torch.Tensor, eps: float) -> torch.Tensor:
    """Mean hinge ``relu(1 - std)`` of each feature's (unbiased) std. Shape: (N, D) -> scalar."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(1.0 - std).mean()


def _covariance(z: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal covariances divided by D. Shape: (N, D) -> scalar."""
    n, d = z.shape
    z = z - z.mean(dim=0)
    cov = z.T @ z / (n - 1)  # (D, D)
    off_diagonal = cov.masked_select(~torch.eye(d, dtype=torch.bool, device=z.device))
    return off_diagonal.pow(2).sum() / d


class VICRegLoss(nn.Module):
    """VICReg loss (Bardes et al., ICLR 2022).

    ``lambda_param * invariance + mu_param * variance + nu_param * covariance``
    where invariance is the mean squared error between the views, variance is
    ``mean_j relu(1 - sqrt(Var(z_j) + eps))`` averaged over the two views, and
    covariance is the sum over the two views of the squared off-diagonal
    covariances divided by D. Numerically equal to ``lightly.loss.VICRegLoss``
    with the same parameters in one process.

    With ``gather_distributed`` both views are gathered from every rank (with
    gradient, summed back by :func:`synthpos.distributed.gather`) and every rank
    computes all three terms on the global ``world_size * N`` batch. DDP then
    averages identical per-rank losses, whose summed-back gradients make the
    step exactly that of one process on the concatenated batch. (lightly
    computes the invariance term on each rank's own samples, so its per-rank
    values differ from the global loss, though they average to it.)

    Args:
        lambda_param: Weight of the invariance term (paper: 25).
        mu_param: Weight of the variance term (paper: 25).
        nu_param: Weight of the covariance term (paper: 1).
        eps: Added to the variance before the square root, for stability.
        gather_distributed: Compute the loss over the samples of all ranks.
            Has no effect when not distributed.

    Raises:
        ValueError: If a weight or ``eps`` is negative, or
            ``gather_distributed`` is set but ``torch.distributed`` is not
            available.

    Shape:
        - z_a: (N, D) projections of the first view.
        - z_b: (N, D) projections of the second view.
        - output: scalar.

    Example:
        >>> loss_fn = VICRegLoss()
        >>> loss = loss_fn(model(view0), model(view1))
        >>> loss.backward()
    """

    def __init__(
        self,
        lambda_param: float = 25.0,
        mu_param: float = 25.0,
        nu_param: float = 1.0,
        eps: float = 1e-4,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("lambda_param", lambda_param),
            ("mu_param", mu_param),
            ("nu_param", nu_param),
            ("eps", eps),
        ):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0; got {value}")
        check_gather_available(gather_distributed)
        self.lambda_param = float(lambda_param)
        self.mu_param = float(mu_param)
        self.nu_param = float(nu_param)
        self.eps = float(eps)
        self.gather_distributed = bool(gather_distributed)

    def extra_repr(self) -> str:
        return (
            f"lambda_param={self.lambda_param}, mu_param={self.mu_param}, nu_param={self.nu_param}, "
            f"eps={self.eps}, gather_distributed={self.gather_distributed}"
        )

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            z_a: Projections of the first view. Shape: (N, D).
            z_b: Projections of the second view. Shape: (N, D).

        Returns:
            Scalar loss (of the global batch with ``gather_distributed``).

        Raises:
            ValueError: If the inputs are not two (N, D) tensors of equal shape,
                or the (global) batch has fewer than 2 samples, so that the
                variance is undefined.
        """
        _check_pair("z_a", z_a, "z_b", z_b)
        if self.gather_distributed:
            z_a = distributed.gather(z_a)
            z_b = distributed.gather(z_b)
        if z_a.shape[0] < 2:
            raise ValueError(f"VICRegLoss needs a batch of at least 2 samples; got {z_a.shape[0]}")

        invariance = F.mse_loss(z_a, z_b)
        variance = 0.5 * (_variance(z_a, self.eps) + _variance(z_b, self.eps))
        covariance = _covariance(z_a) + _covariance(z_b)
        return self.lambda_param * invariance + self.mu_param * variance + self.nu_param * covariance
