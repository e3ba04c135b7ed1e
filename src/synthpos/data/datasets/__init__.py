"""Indexed in-memory image datasets: Fashion-MNIST, CIFAR-10/100 and image folders.

Every dataset is loaded once into a uint8 array of shape (N, H, W, C). The
datasets used here are small (Fashion-MNIST is 47 MB, CIFAR 150 MB), so holding
them in memory removes decoding from the training loop, and the augmentation
then runs on whole batches (see :mod:`synthpos.data.augment`).

Each item carries its index, because the synthetic-positive store is keyed by
the index of the training image (its anchor).

The readers parse the on-disk formats directly (idx files, the CIFAR "python"
pickles, image files through PIL) instead of going through torchvision's
dataset classes, which would try to download missing data; nothing here
touches the network.
"""

from __future__ import annotations

import gzip
import inspect
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel

from synthpos.data.encoded import EncodedImages, EncodedSplit
from synthpos.errors import SynthposError
from synthpos.registry import DATASETS

if TYPE_CHECKING:
    from synthpos.config import DataConfig

#: class decorator ``@register_dataset("name")`` (``default=True``: the dataset of a recipe that names none)
register_dataset = DATASETS.register

DATA_ENV = "SYNTHPOS_DATA"

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR100_DIR = "cifar-100-python"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

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


# --------------------------------------------------------------------------- roots


def _candidates(source: type[DatasetSource], root: Path | None) -> tuple[list[Path], list[str]]:
    """Folders to try in order, and how to name each place in an error message."""
    paths: list[Path] = []
    described: list[str] = []
    if root is not None:
        # A folder the user names is the only place looked at: silently reading the
        # system copy instead would hide a typo.
        return [Path(root).expanduser()], [f"data.root={root}"]
    name = source.name
    described.append("data.root (unset)")
    env = os.environ.get(DATA_ENV)
    if env:
        base = Path(env).expanduser()
        if source.env_subfolder_only:
            # $SYNTHPOS_DATA itself holds other datasets; only its named sub-folder can be this one (an image folder).
            paths.append(base / name)
            described.append(f"${DATA_ENV}/{name}={base / name}")
        else:
            paths += [base, base / name]
            described.append(f"${DATA_ENV}={base} (and {base / name})")
    else:
        described.append(f"${DATA_ENV} (unset)")
    system = source.system_root
    if system is not None:
        paths.append(system)
        described.append(str(system))
    return paths, described


def find_data_root(name: str, root: Path | None) -> Path:
    """The folder that holds the registered dataset ``name`` (see :meth:`DatasetSource.find_root`).

    Raises:
        SynthposError: the dataset is not registered, or no place holds its data.
    """
    return DATASETS.get(name).find_root(root)


# --------------------------------------------------------------------------- Fashion-MNIST (idx)


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


# --------------------------------------------------------------------------- CIFAR (python pickles)


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


# --------------------------------------------------------------------------- image folders


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_dirs(folder: Path) -> list[Path]:
    """Sub-folders that hold at least one image (at any depth), sorted by name."""
    return sorted(d for d in folder.iterdir() if d.is_dir() and _image_files(d, recursive=True))


def _read_image(path: Path, size: int | None) -> np.ndarray:
    """One image as uint8 (H, W, 3), resized to (size, size) when ``size`` is set."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            rgb = np.array(img.convert("RGB"), dtype=np.uint8)  # a copy: asarray would be read-only
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise SynthposError(f"{path} cannot be read as an image ({err}); delete or replace it") from err
    if size is not None and rgb.shape[:2] != (size, size):
        rgb = _resize_uint8(rgb[None], size)[0]
    return rgb


def read_image(path: Path, size: int | None = None) -> np.ndarray:
    """One image file as uint8 (H, W, 3), resized to (size, size) when ``size`` is set.

    Raises:
        SynthposError: the file cannot be read as an image.
    """
    return _read_image(path, size)


def image_folder_files(folder: Path) -> list[Path]:
    """The files of an image folder in the order the ``image_folder`` loader numbers its images:
    class sub-folders by name, each one's files sorted by path; or the loose files, sorted."""
    class_dirs = _class_dirs(folder)
    if class_dirs:
        return [path for d in class_dirs for path in _image_files(d, recursive=True)]
    return _image_files(folder, recursive=False)


def _list_image_folder(folder: Path, train_root: Path | None) -> tuple[list[Path], np.ndarray | None, list[str]]:
    """The files of an image folder, their labels (None: unlabelled) and the class names."""
    class_dirs = _class_dirs(folder)
    loose = _image_files(folder, recursive=False)
    if class_dirs and loose:
        raise SynthposError(
            f"{folder} holds both class sub-folders and loose images (e.g. {loose[0].name}); "
            "move the loose images into a class folder, or put all images directly in the folder for unlabelled data"
        )
    if class_dirs:
        classes = [d.name for d in class_dirs]
        # The test split must number classes like the training split, or labels would not line up.
        if train_root is not None and train_root.is_dir() and train_root != folder:
            train_classes = [d.name for d in _class_dirs(train_root)]
            if train_classes:
                unknown = sorted(set(classes) - set(train_classes))
                if unknown:
                    raise SynthposError(f"{folder} has classes not in the training folder {train_root}: {', '.join(unknown)}; rename or remove them")
                classes = train_classes
        class_index = {c: i for i, c in enumerate(classes)}
        files, labels_list = [], []
        for d in class_dirs:
            for path in _image_files(d, recursive=True):
                files.append(path)
                labels_list.append(class_index[d.name])
        labels: np.ndarray | None = np.asarray(labels_list, dtype=np.int64)
    else:
        classes = []
        files = loose
        labels = None
    if not files:
        raise SynthposError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}); {ImageFolder.how_to_fix}")
    return files, labels, classes


def _load_image_folder(folder: Path, split: str, size: int | None, train_root: Path | None) -> ImageDataset:
    files, labels, classes = _list_image_folder(folder, train_root)
    arrays = [_read_image(path, size) for path in files]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape
        odd = next(i for i, a in enumerate(arrays) if a.shape != first)
        raise SynthposError(
            f"images in {folder} have different sizes ({files[0].name} is {first[1]}x{first[0]}, "
            f"{files[odd].name} is {arrays[odd].shape[1]}x{arrays[odd].shape[0]}); set data.image_size=N to resize them all to N x N"
        )
    images = np.stack(arrays)
    # Unknown data: measure its statistics rather than assume them.
    scaled = images.reshape(-1, 3).astype(np.float64) / 255.0
    mean = tuple(float(m) for m in scaled.mean(axis=0))
    std = tuple(float(max(s, 1e-3)) for s in scaled.std(axis=0))  # floor: a constant image must not divide by 0
    return ImageDataset(name="image_folder", split=split, images=images, labels=labels, classes=classes, mean=mean, std=std)


# --------------------------------------------------------------------------- loading


def _resize_uint8(images: np.ndarray, size: int, chunk: int = 2048) -> np.ndarray:
    """Resize uint8 (N, H, W, C) to (N, size, size, C), antialiased bilinear.

    Chunked so that a 60,000-image set never needs a float copy of all of it.
    """
    out = np.empty((len(images), size, size, images.shape[-1]), dtype=np.uint8)
    for start in range(0, len(images), chunk):
        x = torch.from_numpy(np.array(images[start : start + chunk])).permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


class DatasetSource:
    """A registered dataset (``data.name``): :meth:`load` reads one split into memory.

    Register one with ``@register_dataset("name")``; ``load_dataset`` then applies the
    config's ``subset`` and ``image_size`` to whatever it returns. What is known about a
    dataset without reading it is declared here, on its class (as timm declares a model's
    facts beside its entry point): the config checks limits with it, and :meth:`find_root`
    finds the data with it, so a plugin dataset is found like a built-in one.
    """

    name: ClassVar[str]
    #: how messages name it
    pretty: ClassVar[str] = ""
    #: training images, classes and the images' side, when fixed (None: known only by reading it)
    train_images: ClassVar[int | None] = None
    num_classes: ClassVar[int | None] = None
    native_side: ClassVar[int | None] = None
    #: per-channel mean and std of the training split in [0, 1] (population std): fixed constants,
    #: so a subset or a resized copy normalises like the full set; None: computed from the images
    stats: ClassVar[tuple[tuple[float, ...], tuple[float, ...]] | None] = None
    #: where a distribution package installs the data (Debian: dataset-fashion-mnist)
    system_root: ClassVar[Path | None] = None
    #: the end of the "not found" message: how to get the data
    how_to_fix: ClassVar[str] = "pass --set data.root=DIR with the data or set $SYNTHPOS_DATA"
    #: the source resizes each image itself while reading (image folders: files differ in size)
    resized_on_load: ClassVar[bool] = False
    #: data.root must be given (no default place to look)
    needs_root: ClassVar[bool] = False
    #: $SYNTHPOS_DATA holds other datasets beside this one: only its sub-folder ``<name>`` is looked in
    env_subfolder_only: ClassVar[bool] = False
    #: the dataset's own settings (``data.<name>``); None: it has none
    settings: ClassVar[type[BaseModel] | None] = None
    #: keys of the ``data`` section that moved into this dataset's own: old key -> key in ``data.<name>``
    moved: ClassVar[dict[str, str]] = {}

    @classmethod
    def load(cls, split: str, root: Path | None, settings: BaseModel | None = None, *,
             test_root: Path | None = None, image_size: int | None = None) -> ImageDataset:
        """One split in memory, from plain arguments: the folder (``data.root``; None: look in the default
        places, :meth:`find_root`), the dataset's own settings (``data.<name>``), the evaluation split's folder
        where the dataset keeps it apart (``data.test_root``), and the side a ``resized_on_load`` source reads
        its images at (``data.image_size``; others are resized by :func:`load_dataset`)."""
        raise NotImplementedError

    @classmethod
    def encoded(cls, split: str, root: Path | None, *, test_root: Path | None = None) -> EncodedSplit | None:
        """Where the split's encoded images are, without decoding them (streaming reads from it), from the
        same plain arguments as :meth:`load`; None: the source is read into memory only (the default)."""
        return None

    @classmethod
    def from_config(cls, config: DataConfig, split: str) -> ImageDataset:
        """:meth:`load` with the ``data`` section's values (its own settings from ``data.<name>``)."""
        if "root" not in inspect.signature(cls.load).parameters:
            # A plugin written for synthpos before datasets took plain arguments: load(config, split).
            from synthpos.config import deprecated_key

            deprecated_key(f"{cls.__qualname__}.load(config, split)",
                           f"{cls.__qualname__}.load(split, root, settings, *, test_root, image_size)")
            return cls.load(config, split)
        own = config.section(cls.name) if cls.settings is not None else None
        return cls.load(split, config.root, own, test_root=config.test_root, image_size=config.image_size)

    @classmethod
    def has_data(cls, folder: Path) -> bool:
        """Whether ``folder`` holds the dataset in a layout :meth:`load` reads (default: it is a folder)."""
        return folder.is_dir()

    @classmethod
    def find_root(cls, root: Path | None) -> Path:
        """The folder that holds the data.

        Looks only in ``root`` when it is given; otherwise in ``$SYNTHPOS_DATA`` and its
        sub-folder ``<name>``, then in :attr:`system_root`.

        Raises:
            SynthposError: no place holds the data; the message names every place tried.
        """
        paths, described = _candidates(cls, root)
        for path in paths:
            if path.is_dir() and cls.has_data(path):
                return path
        raise SynthposError(f"{cls.pretty or cls.name} not found: looked in {', '.join(described)}; {cls.how_to_fix}")


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


@register_dataset("image_folder")
class ImageFolder(DatasetSource):
    """One sub-folder of images per class (or the images directly, unlabelled); the test split in ``test_root``."""

    pretty = "Image folder"
    needs_root = True
    env_subfolder_only = True
    how_to_fix = "pass --set data.root=DIR with one sub-folder of images per class (or the images directly in DIR for unlabelled data)"
    resized_on_load = True

    @classmethod
    def _folders(cls, split: str, root: Path | None, test_root: Path | None) -> tuple[Path, Path | None]:
        """The split's folder, and the training folder whose classes a test split numbers by."""
        if split == "test":
            if test_root is None:
                raise SynthposError(f"the {cls.name} test split needs data.test_root; pass --set data.test_root=DIR with the evaluation images")
            if not Path(test_root).is_dir():
                raise SynthposError(f"data.test_root {test_root} is not a folder; point it at the evaluation images")
            try:
                train_root: Path | None = cls.find_root(root)
            except SynthposError:
                train_root = None  # no training folder: the test split alone is still usable
            return Path(test_root), train_root
        return cls.find_root(root), None

    @classmethod
    def load(cls, split, root, settings=None, *, test_root=None, image_size=None) -> ImageDataset:
        folder, train_root = cls._folders(split, root, test_root)
        return _load_image_folder(folder, split, image_size, train_root)

    @classmethod
    def encoded(cls, split, root, *, test_root=None) -> EncodedSplit:
        files, labels, classes = _list_image_folder(*cls._folders(split, root, test_root))
        return EncodedSplit(EncodedImages.from_files(files), labels, classes)


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
        dataset.images = _resize_uint8(dataset.images, size)
    return dataset
