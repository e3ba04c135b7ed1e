"""WebDataset-style tar shards (``data.name: webdataset``): the format multi-node users keep data in.

``data.root`` holds the training split's shards (``*.tar``, read in name order), ``data.test_root``
the test split's. Inside a shard, the files of one sample share a key (the name up to its first
dot, as webdataset groups them): ``<key>.jpg`` (or ``.jpeg``, ``.png``, ``.webp``, ``.bmp``) is the
image and ``<key>.cls`` its class index as text; a split without ``.cls`` files is unlabelled.
An optional ``classes.txt`` beside the training shards names the classes, one a line.

The shards are indexed once (their headers are read, not their images) into the byte range of
every image, so a sample is one ``seek`` + ``read``: any order the batch sampler asks for (a
shuffled, rank-split, resumable epoch) reads only the images it needs. Uncompressed tar only;
a ``.tar.gz`` cannot be read at an offset.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

from synthpos.data.datasets import DatasetSource, ImageDataset, register_dataset
from synthpos.data.encoded import EncodedImages, EncodedSplit
from synthpos.data.stream import LazyImages, sample_statistics
from synthpos.errors import SynthposError

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp")
CLASSES_FILE = "classes.txt"


def shard_paths(folder: Path) -> list[Path]:
    """The ``*.tar`` shards of a folder, in name order."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name.endswith(".tar"))


def _split_name(name: str) -> tuple[str, str]:
    """``dir/n01.0003.jpg`` -> (``dir/n01``, ``0003.jpg``): webdataset's key is the path up to the base name's first dot."""
    head, _, base = name.rpartition("/")
    stem, _, suffix = base.partition(".")
    return (f"{head}/{stem}" if head else stem), suffix.lower()


def index_shards(paths: list[Path]) -> tuple[EncodedImages, np.ndarray | None]:
    """The byte range of every sample's image in ``paths`` and its label (None: no ``.cls`` at all).

    Raises:
        SynthposError: a shard is not an uncompressed tar, a sample has two images, or some
            samples have a class and others not.
    """
    files = np.array([str(p).encode() for p in paths], dtype=np.bytes_)
    rows: list[tuple[int, int, int]] = []
    labels: list[int | None] = []
    for shard, path in enumerate(paths):
        where: dict[str, int] = {}  # key -> its row, for the .cls that may come before or after the image
        classes: dict[str, int] = {}
        try:
            with tarfile.open(path, mode="r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, suffix = _split_name(member.name)
                    if suffix in IMAGE_SUFFIXES:
                        if key in where:
                            raise SynthposError(f"{path}: sample {key} has two images; keep one image per key")
                        where[key] = len(rows)
                        rows.append((shard, member.offset_data, member.size))
                        labels.append(None)
                    elif suffix == "cls":
                        text = tar.extractfile(member).read().decode().strip()  # type: ignore[union-attr]
                        if not text.lstrip("-").isdigit() or int(text) < 0:
                            raise SynthposError(f"{path}: {member.name} holds {text[:20]!r}, not a class index; write the class number as text")
                        classes[key] = int(text)
        except (tarfile.TarError, OSError, EOFError) as err:
            raise SynthposError(f"{path} cannot be read as an uncompressed tar shard ({err}); rewrite it with `tar cf`") from err
        for key, row in where.items():
            labels[row] = classes.get(key)
    if not rows:
        raise SynthposError(f"the shards ({paths[0].parent if paths else '?'}) hold no images ({', '.join(IMAGE_SUFFIXES)}); "
                            f"{WebDataset.how_to_fix}")
    have = [label is not None for label in labels]
    if any(have) and not all(have):
        missing = have.index(False)
        raise SynthposError(f"{len(have) - sum(have)} of {len(have)} samples have no .cls file (e.g. image {missing}); "
                            "give every sample a class or none")
    return EncodedImages(files, np.asarray(rows, dtype=np.int64)), (np.asarray(labels, dtype=np.int64) if all(have) else None)


@register_dataset("webdataset")
class WebDataset(DatasetSource):
    """Tar shards of ``<key>.jpg`` + ``<key>.cls`` samples; the test split's shards in ``data.test_root``."""

    pretty = "WebDataset shards"
    needs_root = True
    resized_on_load = True
    how_to_fix = ("pass --set data.root=DIR with the training split's .tar shards (<key>.jpg and <key>.cls per sample, "
                  "optional classes.txt) and data.test_root=DIR with the test split's")

    @classmethod
    def has_data(cls, folder: Path) -> bool:
        return folder.is_dir() and bool(shard_paths(folder))

    @classmethod
    def encoded(cls, split: str, root: Path | None, *, test_root: Path | None = None) -> EncodedSplit:
        root = cls.find_root(root)
        folder = root
        if split == "test":
            if test_root is None or not cls.has_data(Path(test_root)):
                raise SynthposError(f"the webdataset test split needs data.test_root with .tar shards (got {test_root}); "
                                    "pass --set data.test_root=DIR")
            folder = Path(test_root)
        images, labels = index_shards(shard_paths(folder))
        classes: list[str] = []
        if labels is not None:
            named = root / CLASSES_FILE
            if named.is_file():
                classes = [line.strip() for line in named.read_text().splitlines() if line.strip()]
            else:
                train_labels = labels if split == "train" else index_shards(shard_paths(root))[1]
                top = int(max(labels.max(), -1 if train_labels is None else train_labels.max()))
                classes = [str(i) for i in range(top + 1)]
            if labels.max() >= len(classes):
                raise SynthposError(f"{folder}: class {labels.max()} is out of range for the {len(classes)} classes of {named}; "
                                    "fix the .cls files or classes.txt")
        return EncodedSplit(images, labels, classes)

    @classmethod
    def load(cls, split, root, settings=None, *, test_root=None, image_size=None) -> ImageDataset:
        listing = cls.encoded(split, root, test_root=test_root)
        images = np.ascontiguousarray(LazyImages(listing.images, image_size))
        # Unknown data: measure its statistics over every image, as an in-memory image folder does.
        mean, std = sample_statistics(images, n=len(images))  # type: ignore[arg-type]
        return ImageDataset(name=cls.name, split=split, images=images, labels=listing.labels,
                            classes=listing.classes, mean=mean, std=std)
