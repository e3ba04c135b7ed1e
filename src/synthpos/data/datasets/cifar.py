"""CIFAR-10 and CIFAR-100 (``data.name: cifar10 | cifar100``): torchvision's "python" pickles.

The batches are unpickled here directly rather than through torchvision's dataset classes,
which would try to download missing data; nothing here touches the network.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from synthpos.data.datasets.base import DatasetSource, register_dataset
from synthpos.data.datasets.image_dataset import ImageDataset
from synthpos.errors import SynthposError

_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR100_DIR = "cifar-100-python"


def _cifar_dir(folder: Path, subdir: str, meta_name: str) -> Path | None:
    """The batches folder, whether ``folder`` is its parent or the folder itself."""
    for candidate in (folder / subdir, folder):
        if (candidate / meta_name).is_file():
            return candidate
    return None


def _unpickle(path: Path) -> dict[bytes | str, Any]:
    fix = "re-extract the CIFAR archive (torchvision's python version) there"
    if not path.is_file():
        raise SynthposError(f"{path} is missing; {fix}")
    try:
        with path.open("rb") as f:
            # encoding="bytes": the archives were pickled by Python 2 (str keys become bytes).
            obj = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, AttributeError, ImportError, IndexError) as err:
        raise SynthposError(f"{path} is corrupt ({err.__class__.__name__}: {err}); {fix}") from err
    if not isinstance(obj, dict):
        raise SynthposError(f"{path} does not hold a CIFAR dict (got {type(obj).__name__}); {fix}")
    return obj


def _get(d: dict[bytes | str, Any], key: str, path: Path) -> Any:
    # Accept both Python-2 style bytes keys and str keys (pickles re-saved by Python 3).
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise SynthposError(f"{path} has no '{key}' entry; it is not a CIFAR batch of the expected kind")


def _decode(names: list[bytes | str]) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _read_cifar_batches(paths: list[Path], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """The batches' images as uint8 (N, 32, 32, 3) and their labels as int64 (N,)."""
    images, labels = [], []
    for path in paths:
        batch = _unpickle(path)
        data = np.asarray(_get(batch, "data", path), dtype=np.uint8)
        batch_labels = np.asarray(_get(batch, label_key, path), dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(batch_labels) != len(data):
            raise SynthposError(
                f"{path}: expected data of shape (N, 3072) and N labels, got {data.shape} and {batch_labels.shape}; re-extract the archive"
            )
        # Rows are channel-major (1024 red, 1024 green, 1024 blue); store as (N, H, W, C).
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(batch_labels)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def _load_cifar(folder: Path, source: type[CIFAR10], split: str) -> ImageDataset:
    name = source.name
    subdir, meta = source.batches
    base = _cifar_dir(folder, subdir, meta)
    assert base is not None  # find_root checked
    classes = _decode(_get(_unpickle(base / meta), source.class_names_key, base / meta))
    images, labels = _read_cifar_batches([base / f for f in source.split_files[split]], source.labels_key)
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise SynthposError(f"{base}: labels run outside 0..{len(classes) - 1} (the meta file names {len(classes)} classes); re-extract the archive")
    mean, std = source.stats
    return ImageDataset(name=name, split=split, images=images, labels=labels, classes=classes, mean=mean, std=std)


@register_dataset("cifar10")
class CIFAR10(DatasetSource):
    """CIFAR-10, torchvision's python version."""

    pretty = "CIFAR-10"
    train_images, num_classes, native_side = 50000, 10, 32
    stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    how_to_fix = (f"pass --set data.root=DIR where DIR holds {_CIFAR10_DIR}/ (torchvision's python version: "
                  "data_batch_1..5, test_batch, batches.meta) or set $SYNTHPOS_DATA")
    #: the batches' folder and the meta file that marks it
    batches: ClassVar[tuple[str, str]] = (_CIFAR10_DIR, "batches.meta")
    #: the batch files of each split, the meta file's key of the class names, a batch's key of the labels
    split_files: ClassVar[dict[str, list[str]]] = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    class_names_key: ClassVar[str] = "label_names"
    labels_key: ClassVar[str] = "labels"

    @classmethod
    def has_data(cls, folder: Path) -> bool:
        return _cifar_dir(folder, *cls.batches) is not None

    @classmethod
    def load(cls, split, root, settings=None, *, test_root=None, image_size=None) -> ImageDataset:
        return _load_cifar(cls.find_root(root), cls, split)


@register_dataset("cifar100")
class CIFAR100(CIFAR10):
    """CIFAR-100, torchvision's python version."""

    pretty = "CIFAR-100"
    num_classes = 100
    stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
    how_to_fix = (f"pass --set data.root=DIR where DIR holds {_CIFAR100_DIR}/ (torchvision's python version: "
                  "train, test, meta) or set $SYNTHPOS_DATA")
    batches = (_CIFAR100_DIR, "meta")
    split_files = {"train": ["train"], "test": ["test"]}
    class_names_key, labels_key = "fine_label_names", "fine_labels"
