"""Centred kernel alignment (CKA) between two representations of the same images.

Kornblith et al. (ICML 2019): ``CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` for
Gram matrices K and L of the two representations. The biased estimator centres the Gram
matrices (``HKH``); the unbiased one (Song et al. 2012), used by Nguyen et al. (ICLR 2021)
for *minibatch* CKA, zeroes their diagonals and corrects the sums, so HSIC averaged over
minibatches estimates the full-data HSIC without the small-batch bias.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch

__all__ = ["cka", "gram", "hsic", "MinibatchCKA"]

Kernel = Literal["linear", "rbf"]


def _as_matrix(x, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() < 2:
        raise ValueError(f"{name} must have shape (N, ...) with one row per image; got {tuple(x.shape)}")
    return x.detach().flatten(1).to(torch.float64)


def gram(x: torch.Tensor, kernel: Kernel = "linear", sigma: float = 1.0) -> torch.Tensor:
    """Gram matrix of the rows of ``x``.

    ``rbf``: ``exp(-|a - b|^2 / (2 s^2))`` with ``s = sigma * sqrt(median squared distance)``
    (Kornblith et al.'s bandwidth: a fraction of the median distance).

    Shape: (N, D) -> (N, N).
    """
    if kernel == "linear":
        return x @ x.T
    if kernel == "rbf":
        sq = torch.cdist(x, x).square()
        off = sq[~torch.eye(len(x), dtype=torch.bool, device=x.device)]
        scale = sigma**2 * off.median().clamp_min(1e-12)
        return torch.exp(-sq / (2 * scale))
    raise ValueError(f"kernel must be 'linear' or 'rbf'; got {kernel!r}")


def _centre(k: torch.Tensor) -> torch.Tensor:
    """``HKH`` with ``H = I - 11'/n``, in O(n^2): subtract row and column means, add back the grand mean."""
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def hsic(k: torch.Tensor, l: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """HSIC of two (N, N) Gram matrices (up to a factor common to all pairs, which CKA cancels).

    biased: ``tr(HKH HLH) / (n - 1)^2``; unbiased (needs N >= 4): Song et al.'s
    ``[tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))`` with zeroed diagonals.
    """
    n = k.shape[0]
    if not unbiased:
        return torch.sum(_centre(k) * _centre(l)) / (n - 1) ** 2
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 images; got {n}")
    k = k - torch.diag(torch.diagonal(k))
    l = l - torch.diag(torch.diagonal(l))
    ones_k, ones_l = k.sum(0), l.sum(0)  # 1'K~ and 1'L~ (symmetric matrices)
    trace = torch.sum(k * l)
    return (trace + ones_k.sum() * ones_l.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * ones_k @ ones_l) / (n * (n - 3))


def cka(x, y, kernel: Kernel = "linear", unbiased: bool = False, sigma: float = 1.0) -> float:
    """CKA between two representations of the same N images.

    Args:
        x: Shape: (N, D1) (or (N, ...), flattened).
        y: Shape: (N, D2); row i of both describes image i.
        kernel: ``linear`` or ``rbf``.
        unbiased: Use the unbiased HSIC estimator (minibatch CKA, Nguyen et al. 2021).
        sigma: ``rbf`` bandwidth as a fraction of the median distance.

    Returns:
        CKA in [0, 1] (the unbiased estimate can fall slightly outside for small N).

    Raises:
        ValueError: different numbers of rows, fewer than 2 rows (4 unbiased), an unknown kernel.

    Example:
        >>> cka(torch.randn(100, 8), torch.randn(100, 16))  # unrelated: near 0
    """
    x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}; CKA compares representations of the same images")
    if x.shape[0] < 2:
        raise ValueError("CKA needs at least 2 images")
    k, l = gram(x, kernel, sigma), gram(y, kernel, sigma)
    kl, kk, ll = hsic(k, l, unbiased), hsic(k, k, unbiased), hsic(l, l, unbiased)
    return float(kl / torch.sqrt(kk * ll).clamp_min(1e-300))


class MinibatchCKA:
    """Layer-by-layer CKA accumulated over minibatches (Nguyen et al., ICLR 2021).

    For every pair (layer i of A, layer j of B), the unbiased linear HSIC of each minibatch
    is summed, and ``CKA_ij = sum HSIC(K_i, L_j) / sqrt(sum HSIC(K_i, K_i) sum HSIC(L_j, L_j))``.

    Example:
        >>> acc = MinibatchCKA(); acc.update([a1, a2], [b1, b2, b3]); acc.matrix()  # (2, 3)
    """

    def __init__(self) -> None:
        self.cross: torch.Tensor | None = None
        self.self_a: torch.Tensor | None = None
        self.self_b: torch.Tensor | None = None

    def update(self, layers_a: Iterable[torch.Tensor], layers_b: Iterable[torch.Tensor]) -> None:
        """Add one minibatch: each entry (B, ...) is a layer's output for the same B >= 4 images."""
        ka = [gram(_as_matrix(a, "layer")) for a in layers_a]
        kb = [gram(_as_matrix(b, "layer")) for b in layers_b]
        cross = torch.tensor([[float(hsic(k, l, True)) for l in kb] for k in ka], dtype=torch.float64)
        sa = torch.tensor([float(hsic(k, k, True)) for k in ka], dtype=torch.float64)
        sb = torch.tensor([float(hsic(l, l, True)) for l in kb], dtype=torch.float64)
        if self.cross is None:
            self.cross, self.self_a, self.self_b = cross, sa, sb
        else:
            self.cross += cross
            self.self_a += sa
            self.self_b += sb

    def matrix(self) -> torch.Tensor:
        """Shape: (layers of A, layers of B)."""
        if self.cross is None:
            raise ValueError("no minibatch added; call update() first")
        return self.cross / torch.sqrt(torch.outer(self.self_a, self.self_b)).clamp_min(1e-300)
