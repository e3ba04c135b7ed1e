"""Where things are in a store directory, and which anchors each shard holds.

A store is a directory::

    manifest.json            format version, dataset fingerprint, generator, K, shape,
                             every shard's byte size and SHA-256 ("shards")
    shard-00000.npy          anchors [0, shard_size): uint8 (n, K, H, W, C) in a raw store,
                             or one encoded file per shard (:mod:`~synthpos.data.store.shard_format`)
    shard-00001.npy          ... the next range
    shard-00001.record.json  a shard's size and hash until generate folds it into the manifest
    verified.json            the stamp of the last full check (:mod:`~synthpos.data.store.verification`)

Nothing here reads or writes a file: these are names and index arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

MANIFEST = "manifest.json"
STAMP = "verified.json"
RECORD_SUFFIX = ".record.json"
SHARD_PREFIX = "shard-"


def shard_stem(shard: int) -> str:
    """``7 -> 'shard-00007'``: the name of shard 7 without its suffix (its record adds ``.record.json``)."""
    return f"{SHARD_PREFIX}{shard:05d}"


def record_name(shard: int) -> str:
    """The file that holds shard ``shard``'s size and hash until generate folds it into the manifest."""
    return shard_stem(shard) + RECORD_SUFFIX


@dataclass(frozen=True)
class StoreLayout:
    """How many anchors, candidates and shards a store has, and which anchors are in which shard."""

    num_anchors: int
    candidates: int
    image_shape: tuple[int, int, int]  # (H, W, C)
    shard_size: int

    @property
    def num_shards(self) -> int:
        return -(-self.num_anchors // self.shard_size)

    def shard_range(self, shard: int) -> tuple[int, int]:
        """The anchors ``[start, end)`` of one shard."""
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.num_anchors)

    def shard_shape(self, shard: int) -> tuple[int, int, int, int, int]:
        """The candidates one shard holds. Shape: (n, K, H, W, C), n = its anchor count."""
        start, end = self.shard_range(shard)
        return (end - start, self.candidates, *self.image_shape)
