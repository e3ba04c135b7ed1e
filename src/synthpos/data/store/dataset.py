"""A synthetic store as a map-style ``torch.utils.data.Dataset``: each anchor with its candidates.

:class:`~synthpos.data.store.store.SyntheticStore` returns raw uint8 arrays, keyed by
anchor index; the anchors themselves live in the dataset the store was made from. This
module puts the two together for one's own training loop::

    store = SyntheticStore.open("runs/fmnist/store")
    data = SyntheticPositivesDataset(store, dataset)           # an ImageDataset, or uint8 (N, H, W, C)
    loader = DataLoader(data, batch_size=256, shuffle=True)
    for batch in loader:
        batch["anchor"]       # (B, C, H, W) float32 in [0, 1]
        batch["candidates"]   # (B, K, C, H, W) float32 in [0, 1]
        batch["label"]        # (B,) int64, when the dataset has labels

The store's memory maps are opened lazily in each DataLoader worker (the store pickles
without them), so ``num_workers > 0`` works.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from synthpos.data.datasets import ImageDataset
from synthpos.data.store.store import SyntheticStore
from synthpos.errors import SynthposError

Transform = Callable[[torch.Tensor], Any]


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, C) -> float32 (..., C, H, W) in [0, 1], as torchvision's ``ToTensor``."""
    return torch.from_numpy(np.ascontiguousarray(images)).movedim(-1, -3).float().div_(255)


class SyntheticPositivesDataset(Dataset):
    """Anchor images and their synthetic positives from a store, one anchor per item.

    Args:
        store: an opened :class:`SyntheticStore`, or the path of one.
        images: the anchors the store was made from: an :class:`ImageDataset` (its labels are
            used) or uint8 images. Shape: (N, H, W, C), N <= the store's anchors; the store's
            fingerprint (shape, count and the content of sampled images) is checked against them.
        labels: class labels (N,) for plain ``images`` (an ``ImageDataset`` brings its own).
        transform: applied to each candidate separately (and to the anchor, unless
            ``anchor_transform`` is given): a float32 (C, H, W) tensor in [0, 1] in, a tensor out
            (torchvision v2 or lightly view transforms take tensors).
        anchor_transform: applied to the anchor; may return anything the DataLoader collates,
            e.g. a list of views (lightly's ``SimCLRTransform``) or a stacked (V, C, H, W) tensor.
        draw: how many candidates each item holds: None for all K, in store order; ``k <= K``
            for k distinct ones drawn anew on each access (from torch's generator, which
            DataLoader seeds per worker).

    Item (a dict; DataLoader's default collate stacks it):
        ``index``: the anchor's index (int). ``anchor``: (C, H, W) float32 in [0, 1].
        ``candidates``: (k, C, H, W) float32 in [0, 1] (k = K, or ``draw``). ``label``: int, only
        when labels are known. With transforms, the shapes and dtype are theirs (``candidates``
        stacked along a new first dimension).

    Raises:
        SynthposError: the images are not (the first anchors of) the store's dataset; ``draw``
            outside 1..K; labels of another length.

    Example:
        >>> data = SyntheticPositivesDataset(store, images)      # store of K=4, images (10, 28, 28, 1)
        >>> data[3]["candidates"].shape
        torch.Size([4, 1, 28, 28])
    """

    def __init__(
        self,
        store: SyntheticStore | str | Path,
        images: ImageDataset | np.ndarray,
        labels: np.ndarray | None = None,
        transform: Transform | None = None,
        draw: int | None = None,
        anchor_transform: Transform | None = None,
    ) -> None:
        if not isinstance(store, SyntheticStore):
            store = SyntheticStore.open(store)
        if isinstance(images, ImageDataset):
            labels = images.labels if labels is None else labels
            images = images.images
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise SynthposError(f"anchor images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
        made = store.manifest["dataset"]
        # The store's own name and split: what is checked here is shape, count and content.
        store.check_dataset(made["name"], made["split"], images)
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
            if labels.shape != (len(images),):
                raise SynthposError(f"need one label per anchor image: {labels.shape} labels for {len(images)} images")
        if draw is not None and not 1 <= draw <= store.candidates:
            raise SynthposError(f"draw={draw} must be between 1 and the store's {store.candidates} candidates")
        self.store, self.images, self.labels = store, images, labels
        self.transform, self.draw = transform, draw
        self.anchor_transform = anchor_transform if anchor_transform is not None else transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"anchor {index} outside 0..{len(self) - 1}")
        index = int(index) % len(self)
        candidates = self.store[index]  # (K, H, W, C) uint8, a view of the memory map
        if self.draw is not None:
            candidates = candidates[torch.randperm(self.store.candidates)[: self.draw].numpy()]
        anchor, candidates = _to_tensor(self.images[index]), _to_tensor(candidates)
        if self.anchor_transform is not None:
            anchor = self.anchor_transform(anchor)
        if self.transform is not None:
            candidates = torch.stack([self.transform(c) for c in candidates])
        item: dict[str, Any] = {"index": index, "anchor": anchor, "candidates": candidates}
        if self.labels is not None:
            item["label"] = int(self.labels[index])
        return item
