"""The shard-format interface: how one shard's candidates become a file and come back.

A store holds its shards in one format, named in its manifest. The store writes a shard
through :meth:`ShardFormat.write` into a hashing writer (so the record's size and hash are
of the bytes written), reads it through :meth:`ShardFormat.open`, and its integrity checks
ask :meth:`ShardFormat.exact_bytes` (a size known from the shape alone, or None) and
:meth:`ShardFormat.describes` (does a shard without a recorded hash look like one of this
store's). Formats: :mod:`~synthpos.data.store.npy_shards` (raw ``.npy``, the default), and
the table of names in :mod:`~synthpos.data.store.formats`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Protocol

import numpy as np


class ShardDamaged(ValueError):
    """A shard file that cannot be read as its store's; the message says what was found (one clause)."""


class ShardReader(Protocol):
    """One open shard, indexed like a uint8 (n, K, H, W, C) array.

    ``reader[i]`` is anchor i's K candidates, (K, H, W, C); ``reader[offsets, candidates]``
    (two int64 arrays of one length B) is one candidate per anchor, (B, H, W, C). A raw
    shard's reader is the memory-mapped array itself.
    """

    def __getitem__(self, index: Any) -> np.ndarray: ...


class ShardFormat(ABC):
    """How a store keeps its shards on disk."""

    #: The name in settings and manifests (``generate.store_format``).
    name: ClassVar[str]
    #: The shard file's suffix, after ``shard-NNNNN``.
    suffix: ClassVar[str]

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> ShardFormat:
        """The format a manifest's ``shard_format`` entry (:meth:`manifest_entry`) describes."""
        return cls()

    def manifest_entry(self) -> dict[str, Any] | None:
        """What a new manifest records under ``shard_format``; None records nothing (raw stores, as before formats)."""
        return None

    @abstractmethod
    def exact_bytes(self, shape: tuple[int, ...]) -> int | None:
        """The file size of a complete shard of ``shape`` (n, K, H, W, C), or None when only its record knows it."""

    @abstractmethod
    def write(self, out: BinaryIO, candidates: np.ndarray) -> None:
        """Write one shard's candidates, uint8 (n, K, H, W, C), to ``out`` (write-only: no seek, no tell)."""

    @abstractmethod
    def open(self, path: Path, shape: tuple[int, ...]) -> ShardReader:
        """Open a shard for reading; it must hold candidates of ``shape`` (n, K, H, W, C).

        Raises:
            ShardDamaged: the file is not a shard of this shape (a header overwritten, cut short).
        """

    def describes(self, path: Path, shape: tuple[int, ...]) -> bool:
        """Whether the file reads as a shard of ``shape``: the check for a shard with no recorded hash."""
        try:
            self.open(path, shape)
        except (ShardDamaged, OSError):
            return False
        return True
