"""Shard files: written whole under a temporary name and renamed, opened through the store's format.

A shard is written to a temporary sibling, hashed as its bytes pass (the record), fsynced,
its record put beside it, and only then renamed to its real name: a crash never leaves a
half-written shard under a real name, and a present shard always has its record.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from synthpos.atomic import atomic_path
from synthpos.data.store.records import HashingWriter, write_json_atomically
from synthpos.data.store.shard_format import ShardDamaged, ShardFormat, ShardReader
from synthpos.errors import SynthposError

_FIX = "run `synthpos generate` with the config that made the store to remake it"


def write_shard_file(path: Path, record_path: Path, write: Callable[[BinaryIO], None]) -> dict[str, Any]:
    """Write one shard atomically with ``write(out)`` (``out``: write-only); return its record (size, SHA-256)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            writer = HashingWriter(fh)  # hashes the bytes as they are written: no second read
            write(writer)
            fh.flush()
            os.fsync(fh.fileno())
        # The record first, then the shard under its name: a present shard always has its record.
        record = writer.record()
        write_json_atomically(record_path, record)
    return record


def open_shard(store_path: Path, path: Path, shard_format: ShardFormat, shape: tuple[int, ...]) -> ShardReader:
    """Open one shard of the store at ``store_path`` for reading; ``shape``: (n, K, H, W, C).

    Raises:
        SynthposError: the shard is missing, or cannot be read as one of this store's (one line with the fix).
    """
    if not path.is_file():
        raise SynthposError(f"store {store_path} is missing {path.name}; {_FIX}")
    try:
        return shard_format.open(path, shape)
    except ShardDamaged as err:
        raise SynthposError(f"store {store_path}: {path.name} is damaged ({err}); {_FIX}") from err
