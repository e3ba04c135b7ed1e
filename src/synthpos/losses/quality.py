"""Per-pair weights for GenView's quality-driven contrastive loss.

GenView (Li et al., ECCV 2024) scores each positive pair with a frozen model
(foreground similarity minus background similarity) and re-weights the
method's per-pair loss by ``w = N * softmax(gamma * q)``. The weights average
to one, so the loss keeps its scale; pairs with a poor synthetic view (low
``q``) count less. The losses that accept ``weights`` (NT-Xent, DCL, DCLW,
negative cosine similarity, MoCo) use this module's checks, so every one of
them treats weights the same way: detached, shape (N,), one per pair.
"""

from __future__ import annotations

import torch

__all__ = ["quality_weights"]


def quality_weights(scores: torch.Tensor, gamma: float) -> torch.Tensor:
    """GenView's per-pair weights ``N * softmax(gamma * scores)``, detached.

    Args:
        scores: Quality score of each positive pair. Shape: (N,).
        gamma: Sharpness; 0 gives all-ones weights, larger values favour
            high-quality pairs more.

    Returns:
        Weights that sum to N, without gradient. Shape: (N,).

    Raises:
        ValueError: If ``scores`` is not a non-empty 1-D floating tensor.

    Example:
        >>> w = quality_weights(torch.tensor([0.1, 0.5, -0.2]), gamma=1.0)
        >>> loss = NTXentLoss(0.2)(z0, z1, weights=w)
    """
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1 or scores.shape[0] < 1:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a non-empty tensor of shape (N,); got {shape}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be a floating-point tensor; got {scores.dtype}")
    scores = scores.detach()
    return scores.shape[0] * torch.softmax(gamma * scores, dim=0)


def _check_weights(weights: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """Return ``weights`` detached, or raise ``ValueError`` unless it is (n,).

    Args:
        weights: Per-pair weights, or None for an unweighted loss.
        n: Number of pairs in the batch.

    Returns:
        ``weights.detach()`` (or None). Shape: (n,).
    """
    if weights is None:
        return None
    if not isinstance(weights, torch.Tensor):
        raise ValueError(f"weights must be a torch.Tensor of shape (N,) or None; got {type(weights).__name__}")
    if weights.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), one per pair; got {tuple(weights.shape)}")
    if not weights.is_floating_point():
        raise ValueError(f"weights must be a floating-point tensor; got {weights.dtype}")
    # The weights rescale each pair's loss; they are never trained through.
    return weights.detach()
