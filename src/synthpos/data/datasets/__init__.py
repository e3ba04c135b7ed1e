"""Indexed in-memory image datasets: Fashion-MNIST, CIFAR-10/100 and image folders.

Every dataset is loaded once into a uint8 array of shape (N, H, W, C); :func:`load_dataset`
reads the split a ``data`` section names and applies its ``subset`` and ``image_size``. The
readers parse the on-disk formats directly (idx files, the CIFAR "python" pickles, image files
through PIL) instead of going through torchvision's dataset classes, which would try to
download missing data; nothing here touches the network.

One concept a module:

- :mod:`.image_dataset`: ``ImageDataset``, one split in memory, each item carrying its index;
- :mod:`.base`: ``DatasetSource`` (the facts a dataset declares, ``load``, ``find_root``) and
  ``register_dataset``;
- :mod:`.discovery`: where the data is (``data.root``, ``$SYNTHPOS_DATA``, the system copy),
  ``find_data_root``;
- :mod:`.resize`: ``resize_uint8`` (``data.image_size``);
- one reader per source: :mod:`.fashion_mnist` (idx files), :mod:`.cifar` (CIFAR-10/100
  pickles), :mod:`.image_folder` (image files, class sub-folders).

Importing this package registers the built-in sources (the ``DATASETS`` registry imports it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from synthpos.data.datasets.base import DatasetSource, register_dataset
from synthpos.data.datasets.discovery import DATA_ENV, find_data_root
from synthpos.data.datasets.image_dataset import ImageDataset
from synthpos.data.datasets.resize import resize_uint8

# The sources register as they are imported, in this order (the order ``data.name``'s known names are listed in).
from synthpos.data.datasets.fashion_mnist import FASHION_MNIST_CLASSES, FashionMNIST, read_idx  # isort: skip
from synthpos.data.datasets.cifar import CIFAR10, CIFAR100  # isort: skip
from synthpos.data.datasets.image_folder import IMAGE_EXTENSIONS, ImageFolder, image_folder_files, read_image  # isort: skip
from synthpos.errors import SynthposError
from synthpos.registry import DATASETS

if TYPE_CHECKING:
    from synthpos.config import DataConfig

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "DATA_ENV",
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "DatasetSource",
    "FashionMNIST",
    "ImageDataset",
    "ImageFolder",
    "find_data_root",
    "image_folder_files",
    "load_dataset",
    "read_idx",
    "read_image",
    "register_dataset",
    "resize_uint8",
]


def load_dataset(config: DataConfig, split: Literal["train", "test"]) -> ImageDataset:
    """Load one split of the dataset that ``config`` names, into memory.

    ``config.image_size`` resizes every image once here (antialiased bilinear);
    ``config.subset`` keeps the first N images of the training split (the test
    split is always whole, so evaluations stay comparable).

    Raises:
        SynthposError: the data is missing or malformed, or the config asks for
            more images than there are.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    name = config.name
    source = DATASETS.get(name)
    dataset = source.from_config(config, split)
    size = None if source.resized_on_load else config.image_size

    if split == "train" and config.subset is not None:
        if config.subset > len(dataset):
            raise SynthposError(
                f"data.subset={config.subset} but the {name} training split has only {len(dataset)} images; lower it or set data.subset=null"
            )
        dataset = dataset.take(config.subset)
    if size is not None and dataset.image_shape[:2] != (size, size):
        dataset.images = resize_uint8(dataset.images, size)
    return dataset
