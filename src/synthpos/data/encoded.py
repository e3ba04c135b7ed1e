"""Where each image of a split is kept, encoded: a file of its own, or a member of a tar shard.

An :class:`EncodedSplit` is what a dataset lists without decoding anything: the byte range of
every image, its label and the class names. :mod:`synthpos.data.stream` decodes from it on
demand; :mod:`synthpos.data.webdataset` and the ``image_folder`` source make one.

The locations are numpy arrays, not Python lists: DataLoader workers forked from the main
process then share them page for page (touching a Python object writes its reference count
and copies its page into every worker, the "memory leak" of list-backed datasets).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(eq=False)
class EncodedImages:
    """The encoded bytes of N images: ``files[member[i, 0]]``, from byte ``member[i, 1]``,
    ``member[i, 2]`` bytes long (-1: the whole file).

    Args:
        files: (F,) file paths as UTF-8 bytes (numpy ``S`` dtype).
        member: int64 (N, 3): file index, offset, size.
    """

    files: np.ndarray
    member: np.ndarray

    @classmethod
    def from_files(cls, paths: list[Path]) -> EncodedImages:
        """One whole file per image."""
        files = np.array([str(p).encode() for p in paths], dtype=np.bytes_) if paths else np.zeros(0, dtype="S1")
        member = np.zeros((len(paths), 3), dtype=np.int64)
        member[:, 0] = np.arange(len(paths))
        member[:, 2] = -1
        return cls(files, member)

    def __len__(self) -> int:
        return len(self.member)

    def __getitem__(self, index: slice | np.ndarray) -> EncodedImages:
        """A subset sharing the file table (its member rows are a copy or a view)."""
        return EncodedImages(self.files, self.member[index])

    def path(self, i: int) -> str:
        return self.files[self.member[i, 0]].decode()

    def describe(self, i: int) -> str:
        """How an error message names image ``i``: its file, or ``shard.tar@offset``."""
        file, offset, size = (int(v) for v in self.member[i])
        return self.path(i) if size < 0 else f"{self.path(i)}@{offset}"

    def read(self, i: int) -> bytes:
        """The encoded bytes of image ``i``."""
        file, offset, size = (int(v) for v in self.member[i])
        with open(self.files[file].decode(), "rb") as fh:
            if size < 0:
                return fh.read()
            fh.seek(offset)
            return fh.read(size)


@dataclass(eq=False)
class EncodedSplit:
    """One split as a dataset lists it before decoding: locations, labels (None: unlabelled), classes."""

    images: EncodedImages
    labels: np.ndarray | None  # int64 (N,)
    classes: list[str]
