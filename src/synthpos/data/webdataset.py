"""WebDataset-style tar shards (``data.name: webdataset``): the format multi-node users keep data in.

``data.root`` holds the training split's shards (``*.tar``, read in name order), ``data.test_root``
the test split's. Inside a shard, the files of one sample share a key (the name up to its first
dot, as webdataset groups them): ``<key>.jpg`` (or ``.jpeg``, ``.png``, ``.webp``, ``.bmp``) is the
image and ``<key>.cls`` its class index as text; a split without ``.cls`` files is unlabelled.
An optional ``classes.txt`` beside the training shards names the classes, one a line.

The shards are indexed once (their headers are read, not their images) into the byte range of
every image, so a sample is one ``seek`` + ``read``: any order the batch sampler asks for (a
shuffled, rank-split, resumable epoch) reads only the images it needs. Uncompressed tar only;
a ``.tar.gz`` cannot be read at an offset. Each shard's index is cached in ``.synthpos-index/``
beside the shards (or the user's cache folder where that is read-only), valid while the tar's
size, modification time and inode stay the same: reopening a big shard set reads one small file
per shard, not every tar header again.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np

from synthpos.atomic import atomic_path
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


#: the per-tar index cache's folder beside the shards (a user cache folder where that is read-only)
INDEX_DIR = ".synthpos-index"
#: bumped when what a cached index holds changes: an index of another version is rebuilt
INDEX_VERSION = 1
#: a tar modified less than this long ago (ns) is indexed but not cached: file systems keep coarse
#: times (a few ms), so a rewrite in the same tick would keep the stamp (git's "racily clean" rule)
RECENT_NS = 2 * 10**9


def _scan_tar(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One shard's samples, read from its headers: int64 (n, 2) offset and size of each image, and
    int64 (n,) its class (-1: no ``.cls``).

    Raises:
        SynthposError: not an uncompressed tar, a sample with two images, a ``.cls`` that is not a class index.
    """
    rows: list[tuple[int, int]] = []
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
                    rows.append((member.offset_data, member.size))
                elif suffix == "cls":
                    text = tar.extractfile(member).read().decode().strip()  # type: ignore[union-attr]
                    if not text.lstrip("-").isdigit() or int(text) < 0:
                        raise SynthposError(f"{path}: {member.name} holds {text[:20]!r}, not a class index; write the class number as text")
                    classes[key] = int(text)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise SynthposError(f"{path} cannot be read as an uncompressed tar shard ({err}); rewrite it with `tar cf`") from err
    labels = np.full(len(rows), -1, dtype=np.int64)
    for key, row in where.items():
        labels[row] = classes.get(key, -1)
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2), labels


def _index_files(path: Path) -> list[Path]:
    """Where ``path``'s cached index may be, in the order tried: beside the shards, then the user's cache folder
    (``$XDG_CACHE_HOME`` or ``~/.cache``, ``synthpos/tar-index/<hash of the shards' folder>``)."""
    folder = path.resolve().parent
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "synthpos" / "tar-index"
    tag = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    return [folder / INDEX_DIR / f"{path.name}.npz", cache / tag / f"{path.name}.npz"]


def _stamp(path: Path) -> np.ndarray:
    """What a cached index is valid for: the tar's size, modification and change times (ns), inode, and the index
    version. The change time too: ``cp -p``, ``touch -r`` or ``rsync -t --inplace`` can put new bytes under the old
    modification time, never under the old change time. Unsigned: an inode number may not fit an int64."""
    st = path.stat()
    return np.array([st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, INDEX_VERSION], dtype=np.uint64)


def _cached_index(path: Path, stamp: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached index of ``path`` if one was made from the tar as it is now; None otherwise (also for a
    damaged or unreadable cache file, which is then rebuilt)."""
    for file in _index_files(path):
        try:
            with np.load(file, allow_pickle=False) as cached:
                if np.array_equal(cached["stamp"], stamp):
                    rows, labels = cached["rows"], cached["labels"]
                    if rows.ndim == 2 and rows.shape[1] == 2 and labels.shape == (len(rows),):
                        return rows.astype(np.int64), labels.astype(np.int64)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            continue
    return None


def _save_index(path: Path, stamp: np.ndarray, rows: np.ndarray, labels: np.ndarray) -> None:
    """Write the index beside the shards, else in the user's cache folder; neither writable: no cache (the
    index is made again next time, nothing fails)."""
    for file in _index_files(path):
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(file) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, stamp=stamp, rows=rows, labels=labels)
            return
        except OSError:
            continue


def index_tar(path: Path, cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One shard's index (see :func:`_scan_tar`), read from its cache when the tar has not changed since.

    Reading every header of a big shard set at each open takes minutes; the cache makes it one small
    file per shard. It is keyed by the tar's size, modification and change times and inode: a rewritten or
    replaced tar is scanned again and its cache rewritten (atomically: a reader sees the old file or
    the new one). A tar modified in the last :data:`RECENT_NS` is scanned but not cached, so that a
    rewrite within the file system's time resolution cannot leave a stale index behind.
    ``cache=False``: scan, and neither read nor write the cache.
    """
    stamp = _stamp(path) if cache else None
    if stamp is not None and (hit := _cached_index(path, stamp)) is not None:
        return hit
    rows, labels = _scan_tar(path)
    # Cached only if the tar did not change while it was read and is old enough that a rewrite shows in its time.
    if stamp is not None and np.array_equal(_stamp(path), stamp) and time.time_ns() - int(stamp[1]) > RECENT_NS:
        _save_index(path, stamp, rows, labels)
    return rows, labels


def index_shards(paths: list[Path], cache: bool = True) -> tuple[EncodedImages, np.ndarray | None]:
    """The byte range of every sample's image in ``paths`` and its label (None: no ``.cls`` at all).

    Each shard's index is cached (:func:`index_tar`) unless ``cache`` is False.

    Raises:
        SynthposError: a shard is not an uncompressed tar, a sample has two images, or some
            samples have a class and others not.
    """
    files = np.array([str(p).encode() for p in paths], dtype=np.bytes_)
    member_parts, label_parts = [], []
    for shard, path in enumerate(paths):
        rows, labels = index_tar(path, cache)
        member_parts.append(np.column_stack([np.full(len(rows), shard, dtype=np.int64), rows]))
        label_parts.append(labels)
    member = np.concatenate(member_parts) if member_parts else np.zeros((0, 3), dtype=np.int64)
    labels = np.concatenate(label_parts) if label_parts else np.zeros(0, dtype=np.int64)
    if not len(member):
        raise SynthposError(f"the shards ({paths[0].parent if paths else '?'}) hold no images ({', '.join(IMAGE_SUFFIXES)}); "
                            f"{WebDataset.how_to_fix}")
    have = labels >= 0
    if have.any() and not have.all():
        missing = int(np.argmin(have))
        raise SynthposError(f"{int((~have).sum())} of {len(have)} samples have no .cls file (e.g. image {missing}); "
                            "give every sample a class or none")
    return EncodedImages(files, member), (labels if have.all() else None)


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
