"""FID and KID of synthetic images against real ones, in a named feature space.

- **FID** (Heusel et al. 2017): the Fréchet distance between two Gaussians fitted to the
  features, ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``.
- **KID** (Bińkowski et al. 2018): the unbiased MMD^2 with the cubic polynomial kernel
  ``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets, with its standard deviation.

The numbers are only "FID" / "KID" with the Inception network of the TensorFlow FID code
(pytorch-fid's ``pt_inception-2015-12-05-*.pth``), loaded by :func:`fid_inception`. With any
other network (here: the dataset's judge, the fidelity classifier) they are named after it,
"FID (judge features)", so that they are never read as comparable to published FIDs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import inception as tv_inception

from synthpos.errors import SynthposError

__all__ = [
    "FeatureNetwork",
    "fid_inception",
    "fid_kid",
    "file_sha256",
    "frechet_distance",
    "gaussian_stats",
    "inception_network",
    "judge_network",
    "kid",
    "sample_candidates",
    "load_fid_inception",
]

#: uint8 images (B, H, W, C) -> float features (B, D)
Embedding = Callable[[np.ndarray], torch.Tensor]


# ----------------------------------------------------------------------------- the two distances


def gaussian_stats(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D), in float64, of features (N, D)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise SynthposError(f"FID needs at least 2 feature vectors (N, D), got shape {tuple(x.shape)}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _psd_eigvals(matrix: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (clipped at 0) and eigenvectors of a symmetric PSD matrix.

    Round-off leaves eigenvalues of a singular covariance slightly below 0; those are zeros.
    A clearly negative one means the input was not a covariance.
    """
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    scale = max(float(np.abs(values).max(initial=0.0)), 1e-300)
    if values.min(initial=0.0) < -1e-6 * scale:
        raise SynthposError(f"FID: {what} has a negative eigenvalue ({values.min():.3g}); is it a covariance matrix?")
    return np.clip(values, 0, None), vectors


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``Tr((S1 S2)^(1/2))`` is the sum of the square roots of the eigenvalues of S1 S2, which are
    those of the symmetric PSD ``S1^(1/2) S2 S1^(1/2)``: two symmetric eigen-decompositions,
    real throughout (no imaginary round-off as with ``scipy.linalg.sqrtm`` of the non-symmetric
    product), and finite for singular covariances (fewer samples than dimensions), with no
    offset added to them. Cost at 2048 dimensions: about that of ``sqrtm``.

    Args:
        mu1, mu2: means. Shape: (D,).
        sigma1, sigma2: covariances. Shape: (D, D).

    Raises:
        SynthposError: shapes differ, or a matrix is not a covariance (a clearly negative eigenvalue).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise SynthposError(f"FID of features of different sizes: means {mu1.shape} and {mu2.shape}, "
                            f"covariances {sigma1.shape} and {sigma2.shape}")
    values, vectors = _psd_eigvals(sigma1, "the first covariance")
    root1 = (vectors * np.sqrt(values)) @ vectors.T
    product, _ = _psd_eigvals(root1 @ sigma2 @ root1, "S1^(1/2) S2 S1^(1/2)")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(product).sum())


def kid(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, subset_size: int = 1000,
        subsets: int = 100, seed: int = 0) -> tuple[float, float]:
    """KID: the unbiased MMD^2 with ``k(x, y) = (x.y / d + 1)^3``, mean and std over random subsets.

    Each subset draws ``subset_size`` rows of each set without replacement (from a generator
    seeded by ``seed``), the same size for both, as in Bińkowski et al. and torch-fidelity.

    Args:
        real, fake: features. Shape: (N, D) and (M, D).
        subset_size: rows per subset; at least 2 and at most min(N, M).

    Returns:
        ``(mean, std)`` of MMD^2 over the subsets (std 0 for one subset).

    Raises:
        SynthposError: sizes do not fit.
    """
    x, y = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise SynthposError(f"KID of features of different sizes: {tuple(x.shape)} and {tuple(y.shape)}")
    if not 2 <= subset_size <= min(len(x), len(y)):
        raise SynthposError(f"KID subset size {subset_size} must be between 2 and the smaller set's size "
                            f"({min(len(x), len(y))} features); pass a smaller --kid-subset-size")
    if subsets < 1:
        raise SynthposError(f"KID needs at least one subset, got {subsets}")
    rng = np.random.default_rng(seed)
    d, m = x.shape[1], subset_size
    values = np.empty(subsets)
    for i in range(subsets):
        a = x[rng.choice(len(x), m, replace=False)]
        b = y[rng.choice(len(y), m, replace=False)]
        k_aa, k_bb, k_ab = ((a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3)
        # unbiased: the diagonals k(x_i, x_i) are left out of the within-set means
        within = (k_aa.sum() - np.trace(k_aa) + k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
        values[i] = within - 2 * k_ab.mean()
    return float(values.mean()), float(values.std())


# ----------------------------------------------------------------------------- the FID Inception


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """TensorFlow's 3x3 average pool: the padded zeros are not counted in the mean (torchvision counts them)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _max_pool(x: torch.Tensor) -> torch.Tensor:
    """The FID graph's last block pools by max (a quirk of that graph, kept for its numbers)."""
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


class _TFPooling:
    """The branches of a torchvision Inception block, its pooling branch pooled like the TensorFlow graph.

    Only the pool differs from torchvision's blocks, so the blocks keep their modules and
    state_dict keys (``Mixed_5b.branch1x1.conv.weight``): the layout of pytorch-fid's file.
    """

    pool: Callable[[torch.Tensor], torch.Tensor]

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [self.branch1x1(x)]
        if isinstance(self, tv_inception.InceptionA):
            outs.append(self.branch5x5_2(self.branch5x5_1(x)))
            outs.append(self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))))
        elif isinstance(self, tv_inception.InceptionC):
            outs.append(self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))))
            h = x
            for i in range(1, 6):
                h = getattr(self, f"branch7x7dbl_{i}")(h)
            outs.append(h)
        else:  # InceptionE: both 3x3 branches split in two
            h = self.branch3x3_1(x)
            outs.append(torch.cat([self.branch3x3_2a(h), self.branch3x3_2b(h)], 1))
            h = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            outs.append(torch.cat([self.branch3x3dbl_3a(h), self.branch3x3dbl_3b(h)], 1))
        outs.append(self.branch_pool(self.pool(x)))
        return outs


class _FIDInceptionA(_TFPooling, tv_inception.InceptionA):
    pool = staticmethod(_tf_avg_pool)


class _FIDInceptionC(_TFPooling, tv_inception.InceptionC):
    pool = staticmethod(_tf_avg_pool)


class _FIDInceptionE(_TFPooling, tv_inception.InceptionE):
    pool = staticmethod(_tf_avg_pool)


class _FIDInceptionELast(_TFPooling, tv_inception.InceptionE):
    pool = staticmethod(_max_pool)


def fid_inception() -> nn.Module:
    """The Inception-v3 graph of TensorFlow's FID code, randomly initialised, in torchvision's key layout.

    torchvision's inception_v3 with 1008 classes and no auxiliary head, its Mixed_5b..7c blocks
    pooling like TensorFlow (:class:`_TFPooling`); ``load_state_dict`` of
    ``pt_inception-2015-12-05-6726825d.pth`` fits it with ``strict=True``.
    """
    net = tv_inception.Inception3(num_classes=1008, aux_logits=False, transform_input=False, init_weights=False)
    net.Mixed_5b = _FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = _FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = _FIDInceptionA(288, pool_features=64)
    for name, channels_7x7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        setattr(net, name, _FIDInceptionC(768, channels_7x7=channels_7x7))
    net.Mixed_7b = _FIDInceptionE(1280)
    net.Mixed_7c = _FIDInceptionELast(2048)
    return net.eval()


class _InceptionPool3(nn.Module):
    """uint8-range images -> the 2048-d pool3 features of the FID Inception (pytorch-fid's preprocessing)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float in [0, 1]. Shape: (B, 3, H, W) -> (B, 2048)."""
        n = self.net
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = F.max_pool2d(n.Conv2d_2b_3x3(n.Conv2d_2a_3x3(n.Conv2d_1a_3x3(x))), kernel_size=3, stride=2)
        x = F.max_pool2d(n.Conv2d_4a_3x3(n.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                     "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(n, name)(x)
        return x.mean(dim=(2, 3))


def load_fid_inception(path: Path) -> nn.Module:
    """:func:`fid_inception` with the weights of a pytorch-fid file.

    Raises:
        SynthposError: the file is missing, unreadable, or not in that layout.
    """
    path = Path(path)
    if not path.is_file():
        raise SynthposError(f"--fid-weights {path} does not exist; pass pytorch-fid's pt_inception-2015-12-05-*.pth")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's
        raise SynthposError(f"--fid-weights {path} cannot be read as a PyTorch state_dict: {e}") from None
    net = fid_inception()
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, AttributeError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SynthposError(f"--fid-weights {path} is not pytorch-fid's Inception state_dict "
                            f"(pt_inception-2015-12-05-*.pth): {first}") from None
    return net


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- named feature networks


@dataclass
class FeatureNetwork:
    """A feature network and how its numbers are named.

    Attributes:
        embed: uint8 images (B, H, W, C) -> features (B, D).
        name: what the network is, for the protocol.
        file: the weights file; sha256 its hash.
        standard: True only for the FID Inception: its numbers are "FID"/"KID"; otherwise
            they are "FID (<label>)".
        label: the feature space's name in the metric's name ("judge features").
    """

    embed: Embedding
    name: str
    file: str | None
    sha256: str | None
    standard: bool
    label: str = "Inception pool3"

    @property
    def fid_name(self) -> str:
        return "FID" if self.standard else f"FID ({self.label})"

    @property
    def kid_name(self) -> str:
        return "KID" if self.standard else f"KID ({self.label})"


def inception_network(path: Path, batch_size: int = 100, device: str | torch.device = "cpu") -> FeatureNetwork:
    """The FID Inception from pytorch-fid's weight file; grey images are repeated to 3 channels."""
    model = _InceptionPool3(load_fid_inception(path)).to(device).eval()

    @torch.no_grad()
    def embed(images: np.ndarray) -> torch.Tensor:
        out = []
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start: start + batch_size])).permute(0, 3, 1, 2)
            x = x.to(device, torch.float32) / 255
            if x.shape[1] == 1:  # as PIL's convert("RGB") gives pytorch-fid
                x = x.expand(-1, 3, -1, -1)
            out.append(model(x).double().cpu())
        return torch.cat(out)

    return FeatureNetwork(embed, "FID Inception-v3 (pytorch-fid weights, pool3, 2048-d, images resized to 299 px)",
                          str(path), file_sha256(path), standard=True)


# ----------------------------------------------------------------------------- the measurement


def _features(embed: Embedding, images: np.ndarray, batch: int = 1000) -> np.ndarray:
    return np.concatenate([embed(images[i: i + batch]).double().numpy() for i in range(0, len(images), batch)])


def fid_kid(real_images: np.ndarray, fake_images: np.ndarray, network: FeatureNetwork,
            kid_subset_size: int = 1000, kid_subsets: int = 100, seed: int = 0) -> dict[str, Any]:
    """FID and KID of ``fake_images`` against ``real_images`` in ``network``'s features.

    Works for any images: a store's candidates or a generator's samples.

    Args:
        real_images, fake_images: uint8. Shape: (N, H, W, C) and (M, H, W, C).
        kid_subset_size: capped at min(N, M) (the protocol records the size used).

    Returns:
        ``{"fid": {"name", "value"}, "kid": {"name", "mean", "std"}, "protocol": {...}}``.
    """
    real = _features(network.embed, real_images)
    fake = _features(network.embed, fake_images)
    fid = frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))
    size = min(kid_subset_size, len(real), len(fake))
    kid_mean, kid_std = kid(real, fake, size, kid_subsets, seed)
    return {
        "fid": {"name": network.fid_name, "value": fid},
        "kid": {"name": network.kid_name, "mean": kid_mean, "std": kid_std},
        "protocol": {"feature_network": network.name, "feature_file": network.file, "feature_file_sha256": network.sha256,
                     "feature_dim": int(real.shape[1]), "real_count": len(real), "candidates_count": len(fake),
                     "kid_subset_size": size, "kid_subsets": kid_subsets, "seed": seed,
                     "standard": network.standard},
    }


def judge_network(classifier: nn.Module, mean, std, file: Path | None) -> FeatureNetwork:
    """The dataset's judge (the fidelity classifier), its 128-d penultimate features; named "judge features"."""
    from synthpos.evaluation.fidelity import classifier_outputs

    def embed(images: np.ndarray) -> torch.Tensor:
        return classifier_outputs(classifier, images, mean, std)[1]

    return FeatureNetwork(embed, "the dataset's judge: the fidelity classifier's penultimate layer (128-d), "
                                 "trained on the real train split; not the FID Inception, not comparable to published FIDs",
                          None if file is None else str(file), None if file is None else file_sha256(Path(file)),
                          standard=False, label="judge features")


def sample_candidates(store, anchors: int, count: int, seed: int) -> np.ndarray:
    """``count`` candidates drawn without replacement (seeded) from all K candidates of the first ``anchors`` anchors.

    Args:
        store: a :class:`~synthpos.data.synthetic_store.SyntheticStore`.

    Returns:
        uint8 images. Shape: (min(count, anchors * K), H, W, C), in (anchor, candidate) order.
    """
    k = store.candidates
    picks = np.sort(np.random.default_rng(seed).choice(anchors * k, min(count, anchors * k), replace=False))
    return store.get(picks // k, picks % k)
