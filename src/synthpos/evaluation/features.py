"""Frozen features: computed once per (backbone, dataset) and cached on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from synthpos.atomic import atomic_path
from synthpos.data.augment import to_model_input
from synthpos.data.stream import MappedImages, decoded_chunks


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images: np.ndarray,
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int = 512,
    device: torch.device | str | None = None,
    num_workers: int = 0,
) -> torch.Tensor:
    """Backbone features of uint8 images, in eval mode, no augmentation.

    Args:
        images: Shape: (N, H, W, C), uint8; an array or a streamed split (decoded a batch at a time).
        size: images are resized to ``size`` x ``size`` (the pretraining crop size).
        num_workers: processes that decode a streamed split's batches (:func:`~synthpos.data.stream.decoded_chunks`).

    Returns:
        float32 features on the CPU. Shape: (N, D).
    """
    device = torch.device(device or next(backbone.parameters()).device)
    was_training = backbone.training
    backbone.eval()
    out = []
    for chunk in decoded_chunks(images, batch_size, num_workers):
        batch = torch.from_numpy(chunk).permute(0, 3, 1, 2).to(device)
        out.append(backbone(to_model_input(batch, size, mean, std)).float().cpu())
    backbone.train(was_training)
    return torch.cat(out)


def images_digest(images: np.ndarray) -> str:
    """A short SHA-256 of every byte of ``images`` (a 10,000-image Fashion-MNIST split: ~10 ms).

    A streamed split (:class:`~synthpos.data.stream.LazyImages`) is named by its ``fingerprint()``
    instead (its files' locations, sizes and times): hashing its pixels would decode it all.
    """
    if hasattr(images, "fingerprint"):
        return "s" + images.fingerprint()
    return hashlib.sha256(memoryview(np.ascontiguousarray(images)).cast("B")).hexdigest()[:12]


def _mirror(images: np.ndarray) -> np.ndarray:
    return images[:, :, ::-1]


def mirrored(images: np.ndarray) -> np.ndarray:
    """``images`` flipped left-right (the linear-paper protocol's flip): (N, H, W, C), W reversed.

    A view of an in-memory array; on a streamed split, flipped chunk by chunk as it is decoded.
    """
    if isinstance(images, np.ndarray):
        return _mirror(images)
    return MappedImages(images, _mirror, images.shape[-1], "mirror")


def cached_features(
    cache_dir: Path, key: str, compute, *, backbone_file: Path | None = None
) -> torch.Tensor:
    """``compute()`` once; later calls with the same key (and backbone bytes) read ``cache_dir``."""
    tag = key
    if backbone_file is not None:
        tag += "-" + hashlib.sha256(Path(backbone_file).read_bytes()).hexdigest()[:12]
    path = Path(cache_dir) / f"{tag}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    features = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(features, tmp)
    return features
