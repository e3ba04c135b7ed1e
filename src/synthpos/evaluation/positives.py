"""What synthetic positives are worth: fidelity, diversity and memorisation, from arrays.

One accumulator serves every caller that judges candidates: ``inspect-store`` (a store,
read in batches), the generator's training-time check and the frontier benchmark
(candidates made in memory). It sees anchors beside their K candidates, batch by batch:

- **Fidelity**: the share of candidates the fidelity classifier gives their anchor's label.
- **Diversity**: mean distance between an anchor's candidates and from a candidate to its
  anchor, in pixels (RMS in [0, 1]) and in features (the classifier's penultimate layer or
  another encoder), beside two scales: two random real images, and two random real images
  of the same class (a positive should be about as far as another image of its class).
- **Memorisation**: the share of candidates that some other training image is nearer to (in
  pixels) than their own anchor, the share whose nearest training image is the anchor, and,
  for scale, how near a candidate and a real image (its anchor) are to their nearest other
  training image, and the share nearer to their nearest other training image than their
  anchor is to that image (a copy of another image, which the first share cannot tell from
  a dense neighbourhood). (In a set as dense as Fashion-MNIST's 60,000 images a real image's nearest
  neighbour is often nearer than a same-class image picked at random, so a positive as far
  from its anchor as the diversity floor asks can be nearer to another training image
  without copying it: read the share beside the two nearest-neighbour distances.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from synthpos.evaluation.fidelity import Classifier, classifier_outputs

__all__ = ["FEATURE_METRIC", "PIXEL_METRIC", "PositivesStats", "feature_distances", "memorisation", "pixel_distances"]

PIXEL_METRIC = "RMS difference of the images scaled to [0, 1] (0: identical, 1: black against white everywhere)"
FEATURE_METRIC = "cosine distance 1 - cos(a, b) of L2-normalised features (0: same direction, 1: orthogonal)"

#: uint8 images (B, H, W, C) -> float features (B, D)
Embedding = Callable[[np.ndarray], torch.Tensor]

_BASELINE_IMAGES = 2000  # real images used for the two scales (a scale, not a statistic to the last digit)
_EXACT = "donot_use_mm_for_euclid_dist"  # |x|^2 + |y|^2 - 2xy cancels badly for near-equal images


def _upper_pairs(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = torch.triu_indices(k, k, offset=1)
    return rows, cols


def _unit(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, ...) -> float64 (B, D) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).reshape(len(images), -1).double().div_(255)


def pixel_distances(anchors: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-anchor mean RMS pixel distances (images scaled to [0, 1]).

    Args:
        anchors: uint8. Shape: (n, H, W, C).
        candidates: uint8. Shape: (n, K, H, W, C).

    Returns:
        ``(between, to_anchor)``, float64, each of shape (n,): the mean distance over the
        K(K-1)/2 pairs of one anchor's candidates (NaN when K = 1), and the mean distance
        from its candidates to the anchor.
    """
    n, k = candidates.shape[:2]
    c = _unit(candidates.reshape(n * k, -1)).reshape(n, k, -1)
    a = _unit(anchors).reshape(n, 1, -1)
    scale = math.sqrt(c.shape[-1])  # Euclidean distance / sqrt(pixels) = RMS difference
    to_anchor = torch.cdist(c, a, compute_mode=_EXACT).squeeze(-1).mean(1) / scale
    if k < 2:
        return np.full(n, np.nan), to_anchor.numpy()
    rows, cols = _upper_pairs(k)
    between = torch.cdist(c, c, compute_mode=_EXACT)[:, rows, cols].mean(1) / scale
    return between.numpy(), to_anchor.numpy()


def feature_distances(anchor_features: torch.Tensor, candidate_features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-anchor mean cosine distances of L2-normalised features.

    Args:
        anchor_features: Shape: (n, D).
        candidate_features: Shape: (n, K, D).

    Returns:
        ``(between, to_anchor)``, float64, each of shape (n,), as in :func:`pixel_distances`.
    """
    a = F.normalize(anchor_features.double(), dim=-1)
    c = F.normalize(candidate_features.double(), dim=-1)
    to_anchor = 1 - (c * a[:, None]).sum(-1).mean(1)
    k = c.shape[1]
    if k < 2:
        return np.full(len(c), np.nan), to_anchor.numpy()
    rows, cols = _upper_pairs(k)
    between = 1 - (c @ c.transpose(1, 2))[:, rows, cols].mean(1)
    return between.numpy(), to_anchor.numpy()


def memorisation(candidates: np.ndarray, anchor_index: np.ndarray, train_images: np.ndarray,
                 chunk: int = 8192) -> dict[str, np.ndarray]:
    """Each candidate's nearest training image in pixels, against its own anchor.

    Args:
        candidates: uint8. Shape: (m, H, W, C).
        anchor_index: each candidate's anchor, an index into ``train_images``. Shape: (m,).
        train_images: the whole training split, uint8. Shape: (N, H, W, C).

    Returns:
        ``{"to_anchor", "to_nearest_other", "nearest_is_anchor", "closer_to_other",
        "anchor_to_that_image", "copies_other"}``, each (m,): RMS distance to the anchor, to the
        nearest *other* training image, whether the anchor is the nearest training image, whether
        another training image is nearer than the anchor (ties count as not nearer), the anchor's
        own distance to that nearest other image, and whether the candidate is nearer to that
        image than its anchor is (it resembles another training image more than its own anchor
        does: the copy the other criterion cannot tell from a dense neighbourhood).
    """
    c = _unit(candidates).float()
    scale = math.sqrt(c.shape[1])
    anchors = torch.from_numpy(np.asarray(anchor_index, dtype=np.int64))
    best = torch.full((len(c),), float("inf"))
    best_index = torch.zeros(len(c), dtype=torch.long)
    c_sq = c.pow(2).sum(1, keepdim=True)
    for start in range(0, len(train_images), chunk):
        x = _unit(train_images[start: start + chunk]).float()
        # Ranking by the matrix-product form is fine; the winner is re-measured exactly below.
        d2 = c_sq + x.pow(2).sum(1)[None] - 2 * c @ x.T
        own = (anchors >= start) & (anchors < start + len(x))
        d2[own.nonzero().squeeze(1), anchors[own] - start] = float("inf")  # the anchor is not an "other" image
        value, index = d2.min(1)
        better = value < best
        best = torch.where(better, value, best)
        best_index = torch.where(better, index + start, best_index)
    c64 = _unit(candidates)
    to_other = (c64 - _unit(train_images[best_index.numpy()])).pow(2).sum(1).sqrt() / scale
    anchor_images = _unit(train_images[anchors.numpy()])
    to_anchor = (c64 - anchor_images).pow(2).sum(1).sqrt() / scale
    anchor_to_that = (anchor_images - _unit(train_images[best_index.numpy()])).pow(2).sum(1).sqrt() / scale
    return {"to_anchor": to_anchor.numpy(), "to_nearest_other": to_other.numpy(),
            "nearest_is_anchor": (to_anchor <= to_other).numpy(), "closer_to_other": (to_other < to_anchor).numpy(),
            "anchor_to_that_image": anchor_to_that.numpy(), "copies_other": (to_other < anchor_to_that).numpy()}


def _mean(parts: list[np.ndarray]) -> float | None:
    values = np.concatenate(parts) if parts else np.empty(0)
    return None if len(values) == 0 or np.isnan(values).all() else float(np.nanmean(values))


class PositivesStats:
    """Accumulates fidelity, diversity and memorisation of anchors and their K candidates.

    Args:
        mean, std: the dataset's normalisation (for the classifier and the encoder).
        classifier: the fidelity classifier; without it fidelity is None.
        encoder: embeds images for the feature distances; default: the classifier's
            penultimate features; with neither, the feature distances are None.
        train_images: the whole training split, for memorisation (None: not measured).
    """

    def __init__(self, mean, std, classifier: Classifier | None = None, encoder: Embedding | None = None,
                 train_images: np.ndarray | None = None) -> None:
        self.mean, self.std = mean, std
        self.classifier, self.encoder, self.train_images = classifier, encoder, train_images
        self.anchors = 0
        self.candidates: int | None = None
        self._pixel: dict[str, list[np.ndarray]] = {"between": [], "to_anchor": []}
        self._feature: dict[str, list[np.ndarray]] = {"between": [], "to_anchor": []}
        self._agree: list[np.ndarray] = []
        self._anchor_agree: list[np.ndarray] = []
        self._memo: list[dict[str, np.ndarray]] = []

    def _embed(self, images: np.ndarray) -> tuple[np.ndarray | None, torch.Tensor | None]:
        classes, features = (None, None)
        if self.classifier is not None:
            classes, features = classifier_outputs(self.classifier, images, self.mean, self.std)
        return classes, (self.encoder(images) if self.encoder is not None else features)

    def add(self, anchors: np.ndarray, candidates: np.ndarray, labels: np.ndarray | None,
            anchor_index: np.ndarray | None = None) -> None:
        """One batch: anchors (n, H, W, C), candidates (n, K, H, W, C), labels (n,) or None,
        and the anchors' indices in the training split (for memorisation)."""
        n, k = candidates.shape[:2]
        self.anchors += n
        self.candidates = k
        for key, value in zip(("between", "to_anchor"), pixel_distances(anchors, candidates)):
            self._pixel[key].append(value)
        flat = candidates.reshape(n * k, *candidates.shape[2:])
        if self.classifier is not None or self.encoder is not None:
            classes, features = self._embed(flat)
            anchor_classes, anchor_features = self._embed(anchors)
            if classes is not None and labels is not None:
                self._agree.append(classes.reshape(n, k) == np.asarray(labels)[:, None])
                self._anchor_agree.append(anchor_classes == labels)
            if features is not None:
                for key, value in zip(("between", "to_anchor"), feature_distances(anchor_features, features.reshape(n, k, -1))):
                    self._feature[key].append(value)
        if self.train_images is not None and anchor_index is not None:
            memo = memorisation(flat, np.repeat(np.asarray(anchor_index), k), self.train_images)
            # The scale: how near a real image (the anchor) is to the rest of the training set.
            memo["anchor_to_nearest_other"] = memorisation(anchors, np.asarray(anchor_index), self.train_images)["to_nearest_other"]
            self._memo.append(memo)

    def _scales(self, real: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
        """Distances between two real images (image i and i+1 of the first 2000), and between
        two of the same class (image i and the next one of its class)."""
        m = min(len(real), _BASELINE_IMAGES)
        first = np.arange(m)
        pairs = {"between_real_images": np.roll(first, -1)}
        if labels is not None:
            same = np.empty(m, dtype=np.int64)
            for cls in np.unique(labels[:m]):
                members = first[labels[:m] == cls]
                same[members] = np.roll(members, -1)
            pairs["between_same_class_real_images"] = same
        out: dict[str, Any] = {"pixel": {}, "features": {}}
        _, first_features = self._embed(real[:m])
        for name, second in pairs.items():
            out["pixel"][name] = float(pixel_distances(real[:m], real[second][:, None])[1].mean()) if m > 1 else None
            if first_features is not None:
                out["features"][name] = (float(feature_distances(first_features, first_features[second][:, None])[1].mean())
                                         if m > 1 else None)
        return out

    def summary(self, real: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
        """The report: ``{"anchors", "candidates", "fidelity", "diversity": {"pixel", "features"}, "memorisation"}``.

        Args:
            real: real images for the scales (the training split). Shape: (N, H, W, C).
            labels: their labels (for the same-class scale), or None.
        """
        scales = self._scales(real, labels)
        report: dict[str, Any] = {"anchors": self.anchors, "candidates": self.candidates, "fidelity": None}
        report["diversity"] = {"pixel": {
            "metric": PIXEL_METRIC,
            "between_candidates": _mean(self._pixel["between"]),
            "candidate_to_anchor": _mean(self._pixel["to_anchor"]),
            **scales["pixel"],
        }, "features": None}
        if self._feature["to_anchor"]:
            report["diversity"]["features"] = {
                "metric": FEATURE_METRIC,
                "between_candidates": _mean(self._feature["between"]),
                "candidate_to_anchor": _mean(self._feature["to_anchor"]),
                **scales["features"],
            }
        if self._agree:
            agreement = np.concatenate(self._agree)
            report["fidelity"] = {
                "fidelity": float(agreement.mean()),
                "all_candidates_agree": float(agreement.all(axis=1).mean()),
                "anchors_classified_right": float(np.concatenate(self._anchor_agree).mean()),
            }
        report["memorisation"] = None
        if self._memo:
            closer = np.concatenate([m["closer_to_other"] for m in self._memo])
            report["memorisation"] = {
                "metric": "a candidate is closer (pixel RMS) to another training image than to its own anchor",
                "closer_to_another_training_image": float(closer.mean()),
                "nearest_training_image_is_anchor": float(np.concatenate([m["nearest_is_anchor"] for m in self._memo]).mean()),
                "nearer_to_another_training_image_than_its_anchor_is": float(
                    np.concatenate([m["copies_other"] for m in self._memo]).mean()),
                "mean_distance_to_nearest_other": float(np.concatenate([m["to_nearest_other"] for m in self._memo]).mean()),
                "anchor_mean_distance_to_nearest_other": float(
                    np.concatenate([m["anchor_to_nearest_other"] for m in self._memo]).mean()),
                "training_images": len(self.train_images),
            }
        return report
