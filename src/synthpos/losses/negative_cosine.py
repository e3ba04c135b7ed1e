"""Negative cosine similarity, the SimSiam and BYOL prediction loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from synthpos.losses.quality import _check_weights

__all__ = ["NegativeCosineSimilarity"]


class NegativeCosineSimilarity(nn.Module):
    """``-mean(cos(x0, x1))`` along ``dim``.

    SimSiam (Chen & He, CVPR 2021) uses it between one view's prediction and
    the other view's (stop-gradient) projection; BYOL's ``2 - 2 cos`` is an
    affine function of it. Gradients flow into both inputs: detach the target
    yourself. Numerically equal to
    ``lightly.loss.NegativeCosineSimilarity(dim, eps)``.

    Args:
        dim: Dimension along which the cosine similarity is computed.
        eps: Lower bound of each vector's norm, against division by zero
            (as in :func:`torch.nn.functional.cosine_similarity`).

    Shape:
        - x0: (N, D), or any shape (N, ...).
        - x1: same shape as ``x0``.
        - weights: optional (N,) per-pair weights, when ``dim`` is not 0.
        - output: scalar in [-1, 1] (unweighted).

    Example:
        >>> loss_fn = NegativeCosineSimilarity()
        >>> p0, p1 = predictor(z0), predictor(z1)
        >>> loss = 0.5 * (loss_fn(p0, z1.detach()) + loss_fn(p1, z0.detach()))
    """

    def __init__(self, dim: int = 1, eps: float = 1e-8) -> None:
        super().__init__()
        self.dim = int(dim)
        self.eps = float(eps)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, eps={self.eps}"

    def forward(
        self, x0: torch.Tensor, x1: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            x0: First input. Shape: (N, ...).
            x1: Second input. Shape: same as ``x0``.
            weights: Optional per-pair weights for the N rows, used detached;
                the loss becomes ``-mean_n(weights[n] * cos_n)``. Shape: (N,).

        Returns:
            Scalar: the negated mean cosine similarity.

        Raises:
            ValueError: If ``x0`` and ``x1`` differ in shape, are empty, ``dim``
                is out of range for them, or ``weights`` is given with
                ``dim == 0`` or with a shape other than (N,).
        """
        for name, x in (("x0", x0), ("x1", x1)):
            if not isinstance(x, torch.Tensor):
                raise ValueError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
        if x0.shape != x1.shape:
            raise ValueError(f"x0 and x1 must have the same shape; got {tuple(x0.shape)} and {tuple(x1.shape)}")
        if x0.dim() == 0 or x0.numel() == 0:
            raise ValueError(f"x0 and x1 must be non-empty with shape (N, ...); got {tuple(x0.shape)}")
        if not -x0.dim() <= self.dim < x0.dim():
            raise ValueError(f"dim={self.dim} is out of range for inputs of shape {tuple(x0.shape)}")

        cos = F.cosine_similarity(x0, x1, self.dim, self.eps)
        if weights is None:
            return -cos.mean()
        if self.dim % x0.dim() == 0:
            raise ValueError("weights need one row per pair along dim 0; use dim != 0 with weights")
        weights = _check_weights(weights, x0.shape[0])
        # One weight per row n, shared by all of that row's positions (if any).
        weights = weights.to(cos).reshape((-1,) + (1,) * (cos.dim() - 1))
        return -(weights * cos).mean()
