"""Seeded, class-balanced index sets: the validation carve and the label-efficiency subsets.

Hyper-parameters are chosen on a validation split carved from the *training* split
(never on the test split); label-efficiency probes see a class-balanced fraction of the
training labels. Both are deterministic functions of (labels, fraction, seed).
"""

from __future__ import annotations

import numpy as np

__all__ = ["validation_split", "balanced_subset"]


def _per_class_order(labels: np.ndarray, seed: int) -> dict[int, np.ndarray]:
    """A seeded random order of each class's indices (the same for every fraction: subsets nest)."""
    rng = np.random.default_rng(seed)
    return {int(c): rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)}


def validation_split(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of a training set into (fit, validation) indices.

    Each class gives ``round(fraction * n_c)`` of its ``n_c`` images to validation (at least
    one, and at least one stays for fitting, when the class has two or more).

    Args:
        labels: Class of each training image. Shape: (N,).
        fraction: Share of each class held out, in (0, 1).

    Returns:
        Sorted ``(fit, validation)`` index arrays that partition ``range(N)``.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1); got {fraction}")
    fit, val = [], []
    for order in _per_class_order(np.asarray(labels), seed).values():
        n_val = min(max(1, round(fraction * len(order))), len(order) - 1) if len(order) > 1 else 0
        val.append(order[:n_val])
        fit.append(order[n_val:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))


def balanced_subset(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices of a class-balanced ``fraction`` of a labelled set (at least one image per class).

    Subsets of one seed nest: the 1% subset is inside the 10% one.

    Args:
        labels: Class of each image. Shape: (N,).
        fraction: Share of each class kept, in (0, 1].

    Returns:
        Sorted indices. Shape: (about fraction * N,).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction}")
    keep = [order[: max(1, round(fraction * len(order)))] for order in _per_class_order(np.asarray(labels), seed).values()]
    return np.sort(np.concatenate(keep))
