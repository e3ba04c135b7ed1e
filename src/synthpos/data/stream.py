"""Streaming: images decoded from their files or tar shards when a batch asks for them.

A streamed split is an ordinary :class:`~synthpos.data.datasets.ImageDataset` whose ``images``
is a :class:`LazyImages`: an array-like of shape (N, H, W, 3) that decodes the images an index
names and keeps none of them. Everything that fetches batches by index (``dataset.batch``,
the pretraining loader, the synthetic store's checks) works on it unchanged, and the decoding
happens wherever the batch is fetched: in the DataLoader's worker processes when
``data.num_workers`` > 0.

What the contracts rest on:

- The batch order comes from :class:`~synthpos.resumable.ResumableBatchSampler`, which splits
  each epoch's permutation over ranks (every rank the same number of batches; the remainder
  dropped, as ``DistributedSampler(drop_last=True)``) and resumes mid-epoch. Workers receive
  whole batches of indices from it, so which worker decodes a batch changes nothing in it.
- Augmentations run in the training step, drawing from the main process's generator, and
  :class:`EpochLoader` advances that generator the same way whatever the worker count, so the
  same seed gives the same batches with 0, 1 or 8 workers.
- A decoded image equals the in-memory path's (same decoder, same resize).

The statistics, the kNN bank and the online probe's images come from a seeded sample of at
most a fixed number of images (:func:`bounded_sample`), so no part of a run grows with the data.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from synthpos.config import DataConfig
from synthpos.data.datasets import ImageDataset, load_dataset
from synthpos.data.datasets.resize import resize_uint8
from synthpos.data.encoded import EncodedImages, EncodedSplit
from synthpos.errors import SynthposError
from synthpos.registry import DATASETS

#: ``data.stream: auto`` streams a split whose decoded size is above this (bytes): CIFAR-10's
#: 150 MB stays in memory, where batches are one fancy-index; 1,600 images at 224 px stream.
AUTO_STREAM_BYTES = 200 * 10**6
#: images the normalisation statistics of a streamed split are measured on
STATS_SAMPLE = 1024
#: images the statistics decode at once (the memory of the measurement is one such chunk)
STATS_CHUNK = 64


def decode_image(data: bytes, size: int | None, name: str) -> np.ndarray:
    """Encoded bytes -> uint8 (H, W, 3), resized to (size, size) when ``size`` is set.

    The same decoder and resize as the in-memory image folder, so both paths give equal pixels.

    Raises:
        SynthposError: the bytes are not an image PIL can read.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            rgb = np.array(img.convert("RGB"), dtype=np.uint8)
    except UnidentifiedImageError as err:
        raise SynthposError(f"{name} cannot be read as an image (not a format PIL knows); delete or replace it") from err
    except (OSError, ValueError) as err:
        raise SynthposError(f"{name} cannot be read as an image ({err}); delete or replace it") from err
    if size is not None and rgb.shape[:2] != (size, size):
        rgb = resize_uint8(rgb[None], size)[0]
    return rgb


class LazyImages:
    """uint8 images of shape (N, H, W, 3), decoded when indexed; holds none of them.

    ``images[i]`` is one decoded (H, W, 3) array; ``images[idx]`` for an index array or list is
    (B, H, W, 3); ``images[a:b]`` is another :class:`LazyImages` (nothing decoded);
    ``np.asarray(images)`` decodes all of them (for the few callers that need an array of a
    bounded slice).

    Args:
        encoded: where the encoded bytes are.
        size: resize every image to (size, size); None: keep the native size, which must then
            be the same for all (the first image's is the reference).
        hw: the (H, W) every image has after decoding, when known.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, encoded: EncodedImages, size: int | None, hw: tuple[int, int] | None = None) -> None:
        if len(encoded) == 0:
            raise ValueError("LazyImages needs at least one image")
        self.encoded, self.size = encoded, size
        if hw is None:
            hw = (size, size) if size is not None else self._decode(0).shape[:2]
        self.hw = (int(hw[0]), int(hw[1]))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.encoded), *self.hw, 3)

    def __len__(self) -> int:
        return len(self.encoded)

    def _decode(self, i: int) -> np.ndarray:
        return decode_image(self.encoded.read(i), self.size, self.encoded.describe(i))

    def _checked(self, i: int) -> np.ndarray:
        image = self._decode(i)
        if image.shape[:2] != self.hw:
            raise SynthposError(
                f"{self.encoded.describe(i)} is {image.shape[1]}x{image.shape[0]} but the first image is "
                f"{self.hw[1]}x{self.hw[0]}; set data.image_size=N to resize them all to N x N")
        return image

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            return LazyImages(self.encoded[key], self.size, self.hw)
        if isinstance(key, (int, np.integer)):
            i = int(key)
            if not -len(self) <= i < len(self):
                raise IndexError(f"index {i} is out of range for {len(self)} images")
            return self._checked(i % len(self))
        idx = np.asarray(key)
        if idx.dtype.kind not in "iu" or idx.ndim != 1:
            raise TypeError(f"LazyImages takes an int, a slice or a 1-d index array, got {key!r:.80}")
        out = np.empty((len(idx), *self.hw, 3), dtype=np.uint8)
        for row, i in enumerate(idx.tolist()):
            out[row] = self[i]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[np.arange(len(self))]
        return out if dtype is None else out.astype(dtype)

    def fingerprint(self) -> str:
        """A short SHA-256 of what the decoded pixels depend on, decoding nothing: the resize, every
        image's location, and each file's size and modification time (a replaced file changes them).

        The in-memory counterpart hashes every decoded byte; here that would decode the split once
        more just to name a cache entry.
        """
        digest = hashlib.sha256(repr((self.size, self.hw)).encode())
        digest.update(np.ascontiguousarray(self.encoded.member).tobytes())
        for f in np.unique(self.encoded.member[:, 0]).tolist():
            path = self.encoded.files[f]
            st = os.stat(path.decode())
            digest.update(path + b"\0" + f"{st.st_size}:{st.st_mtime_ns}".encode())
        return digest.hexdigest()[:12]


class MappedImages:
    """``fn`` applied to the images of a :class:`LazyImages` (or another array-like) when they are read.

    For the per-image changes evaluation makes on a streamed split (the left-right mirror of the
    linear protocol, grey <-> RGB for a backbone of other channels) without an array of the
    split: ``fn`` runs on each slice as it is decoded. It must act on every image alone (an
    elementwise or per-image map), so that a chunk of the output is ``fn`` of the same chunk.

    Args:
        images: uint8 (N, H, W, C), indexed as :class:`LazyImages` is.
        fn: uint8 (B, H, W, C) -> uint8 (B, H, W, channels).
        channels: the channels ``fn`` returns.
        tag: names ``fn`` in :meth:`fingerprint` (two maps with one tag must be one map).
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, images: Any, fn: Callable[[np.ndarray], np.ndarray], channels: int, tag: str) -> None:
        self.images, self.fn, self.channels, self.tag = images, fn, channels, tag

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (*self.images.shape[:3], self.channels)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            return MappedImages(self.images[key], self.fn, self.channels, self.tag)
        if isinstance(key, (int, np.integer)):
            return self.fn(np.asarray(self.images[key])[None])[0]
        return self.fn(np.asarray(self.images[key]))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.fn(np.asarray(self.images))
        return out if dtype is None else out.astype(dtype)

    def fingerprint(self) -> str:
        """The wrapped images' fingerprint (an array's: a hash of its bytes) and the map's tag."""
        if hasattr(self.images, "fingerprint"):
            base = self.images.fingerprint()
        else:
            base = hashlib.sha256(memoryview(np.ascontiguousarray(self.images)).cast("B")).hexdigest()
        return hashlib.sha256(f"{base}|{self.tag}".encode()).hexdigest()[:12]


class IndexedImages:
    """``images[index]`` of a :class:`LazyImages` (or another array-like), read when indexed: a subset
    of a streamed split (fine-tuning's label share) that decodes one batch at a time, never the whole
    subset. Indexed as :class:`LazyImages` is (a slice is another :class:`IndexedImages`).

    Args:
        images: uint8 (N, H, W, C), indexed by int arrays.
        index: the rows of ``images`` this holds, in order. Shape: (M,).
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, images: Any, index: np.ndarray) -> None:
        self.images, self.index = images, np.asarray(index, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.index), *self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            return IndexedImages(self.images, self.index[key])
        if isinstance(key, (int, np.integer)):
            return self.images[int(self.index[key])]
        key = np.asarray(key)
        return np.asarray(self.images[self.index[key.astype(np.int64) if key.size == 0 else key]])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.asarray(self.images[self.index])
        return out if dtype is None else out.astype(dtype)


def subset_images(images: Any, index: np.ndarray) -> Any:
    """``images[index]``: decoded at once for an in-memory array, deferred (:class:`IndexedImages`) for a
    streamed one, so that a subset of a streamed split holds no decoded images."""
    return images[index] if isinstance(images, np.ndarray) else IndexedImages(images, index)


def is_streamed(dataset: ImageDataset) -> bool:
    """Whether ``dataset`` decodes its images on demand."""
    return isinstance(dataset.images, (LazyImages, MappedImages, IndexedImages))


def sample_indices(count: int, n: int, seed: int) -> np.ndarray:
    """``min(n, count)`` distinct indices of ``range(count)``, seeded, in increasing order."""
    if n >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=n, replace=False))


def sample_statistics(images: LazyImages, n: int = STATS_SAMPLE, seed: int = 0,
                      chunk: int | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std in [0, 1] over a seeded sample of ``n`` images.

    Sums in float64, a chunk of images at a time: the memory is one chunk's, not the sample's.
    """
    idx = sample_indices(len(images), n, seed)
    chunk = chunk or STATS_CHUNK
    total = np.zeros(3)
    squares = np.zeros(3)
    pixels = 0
    for start in range(0, len(idx), chunk):
        x = images[idx[start: start + chunk]].reshape(-1, 3).astype(np.float64) / 255.0
        total += x.sum(axis=0)
        squares += np.square(x).sum(axis=0)
        pixels += len(x)
    mean = total / pixels
    std = np.sqrt(np.maximum(squares / pixels - mean**2, 0.0))
    # The same floor as the in-memory path: a constant image must not divide by 0.
    return tuple(float(m) for m in mean), tuple(float(max(s, 1e-3)) for s in std)


def decoded_bytes(count: int, hw: tuple[int, int]) -> int:
    """Bytes that ``count`` decoded RGB images of (H, W) take in memory."""
    return count * hw[0] * hw[1] * 3


def _wants_stream(config: DataConfig, listing: EncodedSplit, hw: tuple[int, int]) -> bool:
    if config.stream == "auto":
        return decoded_bytes(len(listing.images), hw) > AUTO_STREAM_BYTES
    return bool(config.stream)


def open_dataset(config: DataConfig, split: Literal["train", "test"]) -> ImageDataset:
    """One split, streamed or in memory as ``data.stream`` says (see :data:`AUTO_STREAM_BYTES`).

    A source that cannot list its encoded images (CIFAR, Fashion-MNIST) is always read into
    memory by :func:`~synthpos.data.datasets.load_dataset`; ``data.stream: true`` on it is an error.

    Raises:
        SynthposError: ``data.stream: true`` on a source that cannot stream; what
            :func:`~synthpos.data.datasets.load_dataset` raises.
    """
    source = DATASETS.get(config.name)
    if config.stream is False:
        return load_dataset(config, split)
    listing = source.encoded(split, config.root, test_root=config.test_root)
    if listing is None:
        if config.stream is True:
            raise SynthposError(f"data.stream=true but {config.name} is read into memory only (it has no image files "
                                "or shards to stream); set data.stream=auto")
        return load_dataset(config, split)
    if split == "train" and config.subset is not None:
        if config.subset > len(listing.images):
            raise SynthposError(f"data.subset={config.subset} but the {config.name} training split has only "
                                f"{len(listing.images)} images; lower it or set data.subset=null")
        listing = EncodedSplit(listing.images[: config.subset],
                               None if listing.labels is None else listing.labels[: config.subset], listing.classes)
    images = LazyImages(listing.images, config.image_size)
    if not _wants_stream(config, listing, images.hw):
        return load_dataset(config, split)
    return streamed_dataset(config.name, split, images, listing.labels, listing.classes)


def streamed_dataset(name: str, split: str, images: LazyImages, labels: np.ndarray | None,
                     classes: list[str]) -> ImageDataset:
    """An :class:`ImageDataset` over ``images``, with statistics measured on a bounded sample."""
    mean, std = sample_statistics(images)
    return ImageDataset(name=name, split=split, images=images, labels=labels, classes=classes, mean=mean, std=std)


def bounded_sample(dataset: ImageDataset, n: int, seed: int) -> ImageDataset:
    """At most ``n`` images of ``dataset`` in memory, for the kNN bank and the online probe.

    In memory: the first ``n`` (a view, as before streaming existed). Streamed: a seeded sample
    of ``n`` spread over the whole split (the first ``n`` of a class-sorted folder are one class).
    """
    n = min(n, len(dataset))
    if not is_streamed(dataset):
        return dataset.take(n)
    idx = sample_indices(len(dataset), n, seed)
    return ImageDataset(name=dataset.name, split=dataset.split, images=dataset.images[idx],
                        labels=None if dataset.labels is None else dataset.labels[idx],
                        classes=dataset.classes, mean=dataset.mean, std=dataset.std)


def loader_workers(requested: int | None, dataset: ImageDataset) -> int:
    """DataLoader worker processes: ``requested`` (``data.num_workers``), else 0 in memory (a batch
    is one fancy-index, and workers would take the cores the model needs) and up to 4 when streamed."""
    if requested is not None:
        return requested
    return min(4, max(1, (os.cpu_count() or 2) - 1)) if is_streamed(dataset) else 0


def _as_is(chunk: np.ndarray) -> np.ndarray:
    return chunk


class _Batches(torch.utils.data.Dataset):
    """Batch ``k`` of ``images``: the rows ``batches[k]`` (an index array or a slice), decoded (in a worker process)."""

    def __init__(self, images: Any, batches: list[np.ndarray | slice]) -> None:
        self.images, self.batches = images, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> np.ndarray:
        return np.ascontiguousarray(self.images[self.batches[k]])


def decoded_batches(images: Any, batches: list[np.ndarray | slice], workers: int = 0) -> Iterator[np.ndarray]:
    """``images[b]`` for each index array (or slice) ``b`` of ``batches``, in order, as uint8 arrays (B, H, W, C).

    For batches in any order (a shuffled epoch; :func:`decoded_chunks` is consecutive slices): an in-memory array or
    ``workers`` = 0 is indexed here; a streamed split with ``workers`` > 0 is decoded by that many
    DataLoader processes, a few batches in flight, the global random state left as it was.
    """
    if workers == 0 or isinstance(images, np.ndarray):
        for b in batches:
            yield np.ascontiguousarray(images[b])
        return
    yield from DataLoader(_Batches(images, batches), batch_size=None, num_workers=workers, collate_fn=_as_is,
                          generator=torch.Generator())


def decoded_chunks(images: Any, size: int, workers: int = 0) -> Iterator[np.ndarray]:
    """``images`` in consecutive chunks of ``size``, in order, as uint8 arrays (B, H, W, C).

    An in-memory array, or ``workers`` = 0: sliced here. A streamed split with ``workers`` > 0:
    decoded by that many DataLoader processes, at most two chunks each in flight, so the memory is
    a few chunks whatever the split's size. The loader draws its seed from a generator of its
    own: reading features leaves the global random state (and what is drawn after) as it was.
    """
    yield from decoded_batches(images, [slice(start, start + size) for start in range(0, len(images), size)], workers)


class EpochLoader(DataLoader):
    """A DataLoader that advances the global torch generator once per epoch whatever its workers.

    A DataLoader draws its workers' base seed from the global generator when it makes an
    iterator: every epoch without persistent workers, once in all with them. The training
    step's augmentations draw from the same generator, so without this a run with persistent
    workers would augment differently from one without from the second epoch on.
    """

    def __iter__(self):
        if self.persistent_workers and self.num_workers > 0 and self._iterator is not None:
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        return super().__iter__()
