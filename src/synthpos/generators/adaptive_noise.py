"""GenView's adaptive noise level: how much of an image is foreground, from CLIP patch tokens.

Li et al. (GenView, ECCV 2024) add more noise to the unCLIP image embedding of images
whose object fills more of the frame, so that variations of a small object keep it.
The foreground ratio of an image is the share of its patches on the foreground side of
a threshold along the first principal component of the image encoder's patch tokens;
the ratio is binned (0.2, 0.4, 0.6, 0.8) to noise levels 0/100/200/300/400.

What follows the official code (tools/clip_pca in xiaojieli0903/genview):

- PCA of the patch tokens of a sample of the dataset, all patches of all images
  pooled; the tokens are the encoder's last layer after its final LayerNorm (GenView
  patches open_clip to apply ``ln_post`` to the tokens, not only to the pooled one).
- The threshold is a quantile of the first component: ``foreground_share`` of the
  sample's patches are foreground. GenView's code thresholds where the cumulative
  histogram reaches 0.65, about 35% foreground (``foreground_share`` = 0.35).
- ratio = foreground patches / all patches; ``np.digitize`` into the bins.

Where it differs: GenView projects uncentred tokens and picks the foreground side of
the threshold by hand for its encoder (``--mask-type lt`` for ViT-B/16); here tokens
are centred (the same masks, the threshold moves by a constant) and the side is chosen
from the data: the one where the centre of the image lies, since objects are mostly
centred. GenView's bins end at 1.0 with a sixth level (500) for a ratio of exactly 1;
here a ratio of 1 falls into the last bin.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from synthpos.atomic import publish_once
from synthpos.errors import SynthposError


class AdaptiveNoiseSettings(BaseModel):
    """``generate.unclip.adaptive_noise``: GenView's adaptive noise level, a foreground ratio per image binned to a
    noise level."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = Field(False, description="Off: every image uses unclip.noise_level (Ayromlou et al.).")
    bins: list[float] = Field([0.2, 0.4, 0.6, 0.8], description="Foreground-ratio bin edges (ascending).")
    levels: list[int] = Field([0, 100, 200, 300, 400], description="Noise level of each bin (one more than bins).")
    fit_images: int = Field(1000, ge=2, description="Images sampled from the dataset to fit the principal component.")
    foreground_share: float = Field(0.6, gt=0, lt=1, description="Share of the fitting images' patches counted as "
                                    "foreground: sets the threshold (GenView's code: about 0.35, where the cumulative histogram "
                                    "reaches 0.65).")

    @model_validator(mode="after")
    def _check_bins(self) -> AdaptiveNoiseSettings:
        if len(self.levels) != len(self.bins) + 1:
            raise ValueError(f"levels needs one entry more than bins ({len(self.bins) + 1}); got {len(self.levels)}")
        if any(b <= a for a, b in zip(self.bins, self.bins[1:])):
            raise ValueError("bins must be strictly ascending")
        if any(level < 0 for level in self.levels):
            raise ValueError(f"levels must be >= 0 (noise levels of the image embedding); got {self.levels}")
        return self

__all__ = ["ForegroundFit", "PatchMoments", "fit_foreground", "load_fit", "noise_levels", "orientation", "save_fit_once"]


class PatchMoments:
    """Running mean and covariance of patch tokens (float64), fed batch by batch.

    The fitting sample is 1000 images x 256 patches x 1024 channels for ViT-L/14:
    1 GB in float32, so it is streamed rather than held.
    """

    def __init__(self) -> None:
        self.count = 0
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None

    def update(self, tokens: np.ndarray) -> None:
        """Add a batch. Shape: (B, P, D) or (N, D)."""
        flat = np.asarray(tokens, dtype=np.float64).reshape(-1, tokens.shape[-1])
        if self._sum is None:
            self._sum = np.zeros(flat.shape[1])
            self._outer = np.zeros((flat.shape[1], flat.shape[1]))
        self.count += len(flat)
        self._sum += flat.sum(axis=0)
        self._outer += flat.T @ flat

    def principal_component(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean (D,), first principal component (D,)), the component of unit length with
        its largest-magnitude entry positive (scikit-learn's sign convention)."""
        if self.count < 2 or self._sum is None or self._outer is None:
            raise ValueError("need at least two patch tokens to fit a principal component")
        mean = self._sum / self.count
        covariance = (self._outer - self.count * np.outer(mean, mean)) / (self.count - 1)
        _, vectors = np.linalg.eigh(covariance)
        component = vectors[:, -1]  # eigh sorts eigenvalues ascending
        if component[np.argmax(np.abs(component))] < 0:
            component = -component
        return mean, component


def _border_mask(patches: int) -> np.ndarray:
    grid = int(round(np.sqrt(patches)))
    if grid * grid != patches or grid < 3:
        raise ValueError(f"expected a square grid of at least 3x3 patch tokens, got {patches} tokens")
    mask = np.ones((grid, grid), dtype=bool)
    mask[1:-1, 1:-1] = False
    return mask.ravel()


def orientation(projection_sum: np.ndarray) -> int:
    """+1 if the component is larger in the centre of the image than on its border, else -1.

    Args:
        projection_sum: the projection of each patch position summed over images. Shape: (P,).
    """
    border = _border_mask(len(projection_sum))
    return 1 if projection_sum[~border].mean() >= projection_sum[border].mean() else -1


@dataclass(frozen=True)
class ForegroundFit:
    """A fitted foreground direction: a patch is foreground when ``sign * (token - mean) @ component > threshold``."""

    mean: np.ndarray  # (D,)
    component: np.ndarray  # (D,), unit length, largest-magnitude entry positive
    sign: int  # +1 or -1: the side of the component where the foreground lies
    threshold: float
    foreground_share: float
    made_with: dict[str, Any] = field(default_factory=dict)  # what it was fitted from (checked before reuse)

    def projection(self, tokens: np.ndarray) -> np.ndarray:
        """Oriented first-component scores (higher = more foreground). Shape: (..., P, D) -> (..., P)."""
        return self.sign * ((np.asarray(tokens, dtype=np.float64) - self.mean) @ self.component)

    def foreground_ratio(self, tokens: np.ndarray) -> np.ndarray:
        """Share of each image's patches that are foreground. Shape: (N, P, D) -> (N,)."""
        return (self.projection(tokens) > self.threshold).mean(axis=-1)

    def to_json(self) -> dict[str, Any]:
        # float -> repr -> float is exact in JSON, so a reloaded fit gives the same masks.
        return {
            "mean": [float(x) for x in self.mean],
            "component": [float(x) for x in self.component],
            "sign": int(self.sign),
            "threshold": float(self.threshold),
            "foreground_share": float(self.foreground_share),
            "made_with": self.made_with,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ForegroundFit:
        return cls(
            mean=np.asarray(data["mean"], dtype=np.float64),
            component=np.asarray(data["component"], dtype=np.float64),
            sign=int(data["sign"]),
            threshold=float(data["threshold"]),
            foreground_share=float(data["foreground_share"]),
            made_with=dict(data.get("made_with", {})),
        )



def fit_foreground(
    token_batches: Callable[[], Iterable[np.ndarray]], foreground_share: float = 0.6, made_with: dict[str, Any] | None = None
) -> ForegroundFit:
    """Fit the foreground direction and threshold on a sample's patch tokens.

    Two passes over the sample: the first for the principal component, the second for
    the projections (the threshold is a quantile of them, the side a comparison of
    centre and border).

    Args:
        token_batches: called twice; each call yields the same batches of patch tokens,
            each of shape (B, P, D), P a square grid of patches in row-major order.
        foreground_share: share of all patches that end up foreground (GenView's code: about 0.35).
    """
    moments = PatchMoments()
    for tokens in token_batches():
        moments.update(tokens)
    mean, component = moments.principal_component()
    scores, position_sum = [], None
    for tokens in token_batches():
        projection = (np.asarray(tokens, dtype=np.float64) - mean) @ component  # (B, P)
        scores.append(projection.ravel())
        position_sum = projection.sum(axis=0) if position_sum is None else position_sum + projection.sum(axis=0)
    sign = orientation(position_sum)
    threshold = float(np.quantile(sign * np.concatenate(scores), 1.0 - foreground_share))
    return ForegroundFit(mean, component, sign, threshold, float(foreground_share), dict(made_with or {}))


def noise_levels(ratios: np.ndarray, bins: list[float], levels: list[int]) -> np.ndarray:
    """Noise level of each image from its foreground ratio: ``levels[digitize(ratio, bins)]``.

    A ratio equal to an edge goes to the bin above it (``bins[i-1] <= r < bins[i]``).
    Shape: (N,) -> (N,) int.
    """
    if len(levels) != len(bins) + 1:
        raise ValueError(f"levels needs one entry more than bins ({len(bins) + 1}), got {len(levels)}")
    return np.asarray(levels, dtype=np.int64)[np.digitize(np.asarray(ratios), bins)]


def load_fit(path: Path) -> ForegroundFit:
    """Read a fit written by :func:`save_fit_once`.

    Raises:
        SynthposError: the file is not a fit.
    """
    try:
        return ForegroundFit.from_json(json.loads(Path(path).read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise SynthposError(f"{path} is not a valid adaptive-noise fit; delete it (and the store's shards) to fit again") from err


def save_fit_once(fit: ForegroundFit, path: Path) -> ForegroundFit:
    """Write ``fit`` to ``path`` unless a fit is already there; return the one on disk.

    The first writer wins atomically (:func:`synthpos.atomic.publish_once`), so processes
    that fit at the same time all go on with the same fit.
    """
    publish_once(Path(path), json.dumps(fit.to_json(), indent=1))
    return load_fit(path)