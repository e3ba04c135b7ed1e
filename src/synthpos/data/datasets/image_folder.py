"""Image folders (``data.name: image_folder``): one sub-folder of images per class, or the images
directly (unlabelled); the test split in its own folder (``data.test_root``).

Image files are read through PIL; the statistics of unknown data are measured, not assumed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthpos.data.datasets.base import DatasetSource, register_dataset
from synthpos.data.datasets.image_dataset import ImageDataset
from synthpos.data.datasets.resize import resize_uint8
from synthpos.data.encoded import EncodedImages, EncodedSplit
from synthpos.errors import SynthposError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_dirs(folder: Path) -> list[Path]:
    """Sub-folders that hold at least one image (at any depth), sorted by name."""
    return sorted(d for d in folder.iterdir() if d.is_dir() and _image_files(d, recursive=True))


def read_image(path: Path, size: int | None = None) -> np.ndarray:
    """One image file as uint8 (H, W, 3), resized to (size, size) when ``size`` is set.

    Raises:
        SynthposError: the file cannot be read as an image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            rgb = np.array(img.convert("RGB"), dtype=np.uint8)  # a copy: asarray would be read-only
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise SynthposError(f"{path} cannot be read as an image ({err}); delete or replace it") from err
    if size is not None and rgb.shape[:2] != (size, size):
        rgb = resize_uint8(rgb[None], size)[0]
    return rgb


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
    arrays = [read_image(path, size) for path in files]
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
