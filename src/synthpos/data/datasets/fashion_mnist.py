"""Fashion-MNIST (``data.name: fashion_mnist``, the default): its four idx files, gzipped or not.

The idx format (MNIST's) is parsed here directly rather than through torchvision's dataset
class, which would try to download missing data; nothing here touches the network.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from synthpos.data.datasets.base import DatasetSource, register_dataset
from synthpos.data.datasets.image_dataset import ImageDataset
from synthpos.errors import SynthposError

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (the MNIST format), gzipped or not, as a uint8 array.

    Format: two zero bytes, a type byte (0x08 = unsigned byte), the number of
    dimensions, then each dimension as a big-endian int32, then the data.

    Raises:
        SynthposError: the file is truncated, not gzip where named .gz, or not idx.
    """
    fix = "delete it and reinstall the data (apt-get install --reinstall dataset-fashion-mnist) or point data.root elsewhere"
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise SynthposError(f"{path} is corrupt ({err}); {fix}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise SynthposError(f"{path} is not an idx file (bad magic number); {fix}")
    if raw[2] != 0x08:
        raise SynthposError(f"{path}: idx data type 0x{raw[2]:02x} is not unsigned byte (0x08); {fix}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise SynthposError(f"{path} has a truncated idx header; {fix}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise SynthposError(f"{path} holds {len(raw) - header} data bytes but its header {dims} says {expected}; {fix}")
    # A writable copy: frombuffer views the immutable bytes object.
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _load_fashion_mnist(folder: Path, split: str) -> ImageDataset:
    image_stem, label_stem = _IDX_FILES[split]
    image_path, label_path = _find_idx(folder, image_stem), _find_idx(folder, label_stem)
    assert image_path is not None and label_path is not None  # find_data_root checked
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.ndim != 3:
        raise SynthposError(f"{image_path}: expected images of shape (N, H, W), got {images.shape}; is it a label file?")
    if labels.ndim != 1 or len(labels) != len(images):
        raise SynthposError(f"{label_path}: expected {len(images)} labels to match {image_path.name}, got shape {labels.shape}")
    if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
        raise SynthposError(f"{label_path}: label {labels.max()} is out of range 0-9; the file is not Fashion-MNIST labels")
    mean, std = FashionMNIST.stats
    return ImageDataset(
        name="fashion_mnist",
        split=split,
        images=np.ascontiguousarray(images[..., None]),
        labels=labels.astype(np.int64),
        classes=list(FASHION_MNIST_CLASSES),
        mean=mean,
        std=std,
    )


@register_dataset("fashion_mnist", default=True)  # the data every machine here has (Debian's package)
class FashionMNIST(DatasetSource):
    """Fashion-MNIST's four idx files (gzipped or not)."""

    pretty = "Fashion-MNIST"
    train_images, num_classes, native_side = 60000, 10, 28
    stats = ((0.2860,), (0.3530,))
    system_root = Path("/usr/share/datasets/fashion-mnist")
    how_to_fix = ("install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
                  "or pass --set data.root=DIR with the four idx .gz files (train-images-idx3-ubyte.gz, "
                  "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)")

    @classmethod
    def has_data(cls, folder: Path) -> bool:
        return all(_find_idx(folder, stem) is not None for pair in _IDX_FILES.values() for stem in pair)

    @classmethod
    def load(cls, split, root, settings=None, *, test_root=None, image_size=None) -> ImageDataset:
        return _load_fashion_mnist(cls.find_root(root), split)
