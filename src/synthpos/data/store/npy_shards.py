"""Raw shards: ``shard-NNNNN.npy``, the uint8 (n, K, H, W, C) array as ``np.save`` writes it.

The default, and every store made before shard formats existed: reads are memory-mapped, a
candidate is a slice of the map, and a shard's size follows from its shape, so a truncated
or padded shard is found by one ``stat``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO, ClassVar

import numpy as np

from synthpos.data.store.shard_format import ShardDamaged, ShardFormat, ShardReader


def npy_size(shape: tuple[int, ...]) -> int:
    """The size in bytes of ``np.save`` of a C-ordered uint8 array of ``shape`` (header + data)."""
    header = {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": tuple(int(s) for s in shape)}
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, header)
    except ValueError:  # numpy writes version 2.0 when the header does not fit 1.0's 64 KiB
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.tell() + int(np.prod(shape))


class NpyShards(ShardFormat):
    """uint8 arrays in ``.npy`` files, memory-mapped on read."""

    name: ClassVar[str] = "raw"
    suffix: ClassVar[str] = ".npy"

    def exact_bytes(self, shape: tuple[int, ...]) -> int:
        return npy_size(shape)

    def write(self, out: BinaryIO, candidates: np.ndarray) -> None:
        np.save(out, candidates)

    def open(self, path: Path, shape: tuple[int, ...]) -> ShardReader:
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:  # a header overwritten, a file cut short
            raise ShardDamaged(str(err)) from err
        if array.dtype != np.uint8 or array.shape != tuple(shape):
            raise ShardDamaged(f"holds {array.dtype} {array.shape}, expected uint8 {tuple(shape)}")
        # A plain ndarray view of the map: np.memmap's subclass hooks cost on every fancy index.
        return np.asarray(array)
