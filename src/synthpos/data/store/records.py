"""Shard records: each shard's byte size and SHA-256, computed from the bytes as they are written.

A record is kept beside its shard (``shard-NNNNN.record.json``, one file per shard, so
processes writing disjoint shards never touch a shared file) until ``generate`` folds the
records into ``manifest.json``. The same records serve every shard format
(:mod:`~synthpos.data.store.shard_format`): a record is of the file, whatever it holds.

SHA-256, not BLAKE2b: on the CPUs measured (AMD EPYC with SHA-NI, docs/results.md) OpenSSL's
SHA-256 hashes about 880 MiB/s, BLAKE2b 440 MiB/s. The record names its algorithm, so another
can be added without breaking stores.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO

from synthpos.atomic import atomic_path
from synthpos.data.store.layout import MANIFEST, RECORD_SUFFIX, SHARD_PREFIX

HASH = "sha256"
_CHUNK = 8 << 20  # bytes per read while hashing


class HashingWriter:
    """A write-only file wrapper that hashes and counts what passes through it (for ``np.save``)."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh, self._hash, self.size = fh, hashlib.new(HASH), 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        return self._fh.write(data)

    def record(self) -> dict[str, Any]:
        return {"bytes": self.size, HASH: self._hash.hexdigest()}


def file_digest(path: Path) -> str:
    """The hex SHA-256 of a file, read in 8 MiB chunks."""
    h = hashlib.new(HASH)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def read_record(path: Path) -> dict[str, Any] | None:
    """A shard record file, or None if it is absent or unreadable (then the shard counts as unrecorded)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    ok = isinstance(record, dict) and isinstance(record.get("bytes"), int) and isinstance(record.get(HASH), str)
    return record if ok else None


def write_json_atomically(path: Path, data: Any) -> None:
    """``data`` as indented, key-sorted JSON under ``path``, complete or not at all (fsynced, then renamed)."""
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write(json.dumps(data, indent=2, sort_keys=True))
        fh.flush()
        os.fsync(fh.fileno())


def collect_records(path: Path, manifest: dict[str, Any], suffix: str) -> dict[str, dict[str, Any]]:
    """Each shard's record by shard file name (``suffix``: the store's shard suffix): the manifest's,
    overridden by newer record files."""
    records = dict(manifest.get("shards", {}))
    for file in sorted(path.glob(f"{SHARD_PREFIX}*{RECORD_SUFFIX}")):
        record = read_record(file)
        name = file.name[: -len(RECORD_SUFFIX)] + suffix
        if record is None:
            records.pop(name, None)  # an unreadable record vouches for nothing
        else:
            records[name] = record
    return records


def fold_records(path: Path, manifest: dict[str, Any], suffix: str, present: set[str]) -> dict[str, Any] | None:
    """Move the record files of the ``present`` shards into the manifest at ``path`` and delete them.

    Returns the new manifest, or None when nothing changed. One process only: the manifest is rewritten whole.
    """
    records = collect_records(path, manifest, suffix)
    shards = {name: records[name] for name in sorted(records) if name in present}
    files = list(path.glob(f"{SHARD_PREFIX}*{RECORD_SUFFIX}"))
    if shards == manifest.get("shards", {}) and not files:
        return None
    manifest = {**manifest, "shards": shards}
    write_json_atomically(path / MANIFEST, manifest)
    for file in files:
        file.unlink(missing_ok=True)
    return manifest
