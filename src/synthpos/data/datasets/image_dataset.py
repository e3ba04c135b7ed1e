"""``ImageDataset``: one split held in memory as uint8 (N, H, W, C), each item carrying its index.

The datasets used here are small (Fashion-MNIST is 47 MB, CIFAR 150 MB), so holding them in
memory removes decoding from the training loop, and the augmentation then runs on whole batches
(see :mod:`synthpos.data.augment`). Each item carries its index because the synthetic-positive
store is keyed by the index of the training image (its anchor).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(eq=False)  # field-wise == on arrays is ambiguous; identity is what makes sense
class ImageDataset(torch.utils.data.Dataset):
    """Images held in memory as uint8 (N, H, W, C); each item knows its index.

    Items are ``(index, image, label)``: the index into this dataset, a uint8
    tensor of shape (C, H, W), and the class label (-1 when unlabelled).
    """

    name: str
    split: str
    # uint8 (N, H, W, C), C = 1 or 3, C-contiguous; or a streamed split's LazyImages (synthpos.data.stream)
    images: np.ndarray
    labels: np.ndarray | None  # int64 (N,) or None (unlabelled)
    classes: list[str]
    mean: tuple[float, ...]  # per-channel mean in [0, 1]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        # Catch wrong shapes here, once, rather than as a confusing error in a model.
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] not in (1, 3):
            raise ValueError(f"images must be uint8 (N, H, W, C) with C in {{1, 3}}, got {self.images.dtype} {self.images.shape}")
        if self.labels is not None and self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must have shape ({len(self.images)},), got {self.labels.shape}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean/std need {self.channels} values, got {self.mean} / {self.std}")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, int]:
        """Return ``(index, image, label)``; image shape: (C, H, W), uint8."""
        index = int(index)
        if index < 0:
            index += len(self)
        # A copy, so a caller that edits the tensor in place cannot corrupt the dataset.
        image = torch.from_numpy(self.images[index].transpose(2, 0, 1).copy())
        label = -1 if self.labels is None else int(self.labels[index])
        return index, image, label

    def batch(self, indices: torch.Tensor | np.ndarray | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Fetch many items at once (faster than a DataLoader over single items).

        Returns ``(images, labels)``: images uint8 of shape (B, C, H, W); labels
        int64 of shape (B,), -1 when unlabelled.
        """
        idx = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64)
        images = torch.from_numpy(self.images[idx]).permute(0, 3, 1, 2).contiguous()
        if self.labels is None:
            labels = torch.full((len(idx),), -1, dtype=torch.int64)
        else:
            labels = torch.from_numpy(self.labels[idx])
        return images, labels

    def take(self, n: int) -> ImageDataset:
        """The first ``n`` items, sharing memory with this dataset (no copy)."""
        if n < 1:
            raise ValueError(f"take(n) needs n >= 1, got {n}")
        return ImageDataset(
            name=self.name,
            split=self.split,
            images=self.images[:n],
            labels=None if self.labels is None else self.labels[:n],
            classes=self.classes,
            mean=self.mean,
            std=self.std,
        )

    @property
    def num_classes(self) -> int:
        """Number of classes (0 when unlabelled)."""
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.images.shape[-1])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        _, h, w, c = self.images.shape
        return int(h), int(w), int(c)
