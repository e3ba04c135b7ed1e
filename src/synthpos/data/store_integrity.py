"""Store integrity: every shard's size and content hash, checked cheaply on open and fully when needed.

A shard's record (its byte size and SHA-256) is computed from the bytes as they are written
and kept beside it (``shard-NNNNN.record.json``, one file per shard, so processes writing
disjoint shards never touch a shared file) until ``generate`` folds the records into
``manifest.json``. Two levels of checking:

- **cheap, on every open**: each shard exists and has the size its shape implies (one
  ``stat`` per shard). A truncated or missing shard is found here.
- **full**: each shard's bytes hashed and compared with its record. A shard overwritten in
  place (zeros, flipped bytes) is found here. Done once after a store is written (the end
  of ``generate``), on ``inspect-store --verify``, and when a store is opened for training
  and no *stamp* (``verified.json``) says that these very files (size, modification time,
  inode of every shard and of the manifest) were verified. A copied-in store has new
  inodes, so it is verified on its first use. Under torchrun only rank 0 hashes; the others
  wait for it at a barrier and read its stamp.

SHA-256, not BLAKE2b: on the CPUs measured (AMD EPYC with SHA-NI, docs/results.md) OpenSSL's
SHA-256 hashes about 880 MiB/s, BLAKE2b 440 MiB/s. The record names its algorithm, so another
can be added without breaking stores.

A byte flipped in place by the disk without the modification time changing is only found by
a forced full check (``pretrain.verify_store=always``, ``inspect-store --verify``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import numpy as np

from synthpos.atomic import atomic_path
from synthpos.errors import SynthposError

if TYPE_CHECKING:
    from synthpos.data.synthetic_store import SyntheticStore

HASH = "sha256"
STAMP = "verified.json"
_CHUNK = 8 << 20  # bytes per read while hashing
VerifyPolicy = Literal["auto", "always"]

#: A shard's state after a check. "no hash": written before stores recorded hashes (size and header are right).
State = Literal["ok", "missing", "wrong size", "damaged", "no hash"]
_BAD: frozenset[str] = frozenset({"missing", "wrong size", "damaged"})


# ----------------------------------------------------------------------------- bytes and hashes


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


def read_record(path: Path) -> dict[str, Any] | None:
    """A shard record file, or None if it is absent or unreadable (then the shard counts as unrecorded)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    ok = isinstance(record, dict) and isinstance(record.get("bytes"), int) and isinstance(record.get(HASH), str)
    return record if ok else None


def write_json_atomically(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write(json.dumps(data, indent=2, sort_keys=True))
        fh.flush()
        os.fsync(fh.fileno())


# ----------------------------------------------------------------------------- checking shards


@dataclass(frozen=True)
class ShardState:
    """What a check found about one shard."""

    shard: int
    name: str
    state: State
    detail: str = ""

    @property
    def bad(self) -> bool:
        return self.state in _BAD


def check_shard(store: SyntheticStore, shard: int, full: bool, records: dict[str, dict[str, Any]]) -> ShardState:
    """One shard's state: size from ``stat`` (always), its hash against its record (``full``)."""
    path = store.shard_path(shard)
    name = path.name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return ShardState(shard, name, "missing")
    expected = store.expected_bytes(shard)
    if size != expected:
        what = "truncated" if size < expected else "too long"
        return ShardState(shard, name, "wrong size", f"{what}: {size} bytes, expected {expected}")
    record = records.get(name)
    if record is not None and record["bytes"] != expected:
        return ShardState(shard, name, "damaged", f"its record says {record['bytes']} bytes, the layout {expected}")
    if not full:
        return ShardState(shard, name, "ok" if record is not None else "no hash")
    if record is None:
        # No hash to compare with (a store from before hashes): the header must still describe this shard.
        start, end = store.layout.shard_range(shard)
        want = (end - start, store.layout.candidates, *store.layout.image_shape)
        try:
            array = np.load(path, mmap_mode="r")
            readable = array.dtype == np.uint8 and array.shape == want
        except (OSError, ValueError):
            readable = False
        if not readable:
            return ShardState(shard, name, "damaged", "its header does not describe a uint8 shard of this store")
        return ShardState(shard, name, "no hash", "written before shards had hashes")
    if file_digest(path) != record[HASH]:
        return ShardState(shard, name, "damaged", f"its {HASH} differs from the one recorded when it was written")
    return ShardState(shard, name, "ok")


def check_store(store: SyntheticStore, full: bool) -> list[ShardState]:
    """Every shard's state, in shard order (``full``: hashes too)."""
    records = store.records()
    return [check_shard(store, s, full, records) for s in range(store.layout.num_shards)]


def damage_message(store: SyntheticStore, states: list[ShardState]) -> str | None:
    """One line naming the bad shards and the fix, or None when none is bad."""
    bad = [s for s in states if s.bad]
    if not bad:
        return None
    first = bad[0]
    what = {"missing": "missing", "wrong size": f"damaged ({first.detail})", "damaged": f"damaged ({first.detail})"}[first.state]
    more = ""
    if len(bad) > 1:
        names = ", ".join(s.name for s in bad[1:6]) + (", ..." if len(bad) > 6 else "")
        more = f", and {len(bad) - 1} more {'shards are' if len(bad) > 2 else 'shard is'} missing or damaged ({names})"
    return (f"store {store.path}: {first.name} is {what}{more}; run `synthpos generate` with the config that made "
            "the store: it remakes exactly the missing and damaged shards")


def unrecorded_note(store: SyntheticStore, states: list[ShardState]) -> str | None:
    """The upgrade line for a store written before shards had hashes, or None."""
    old = [s for s in states if s.state == "no hash"]
    if not old:
        return None
    return (f"store {store.path}: {len(old)} of {len(states)} shards have no recorded hash (written by an older "
            "synthpos), so only their size and header were checked; run `synthpos generate` once with the config "
            "that made the store to add the hashes")


# ----------------------------------------------------------------------------- the verification stamp


def _file_stats(store: SyntheticStore) -> dict[str, list[int]]:
    """(size, mtime_ns, inode) of the manifest and of every shard present: what a stamp vouches for."""
    stats = {}
    for path in [store.path / "manifest.json", *(store.shard_path(s) for s in range(store.layout.num_shards))]:
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        stats[path.name] = [st.st_size, st.st_mtime_ns, st.st_ino]
    return stats


def write_stamp(store: SyntheticStore, states: list[ShardState], stats: dict[str, list[int]]) -> None:
    """Record that a full check of the files with ``stats`` (taken before hashing) found ``states``.

    A store on a read-only file system goes unstamped: it is then hashed on every use, which is slower but right.
    """
    try:
        write_json_atomically(store.path / STAMP, {"hash": HASH, "files": stats, "shards": [asdict(s) for s in states]})
    except OSError:
        pass


def fresh_stamp(store: SyntheticStore) -> list[ShardState] | None:
    """The states of the last full check if it was of exactly the files there now, else None."""
    try:
        stamp = json.loads((store.path / STAMP).read_text())
        if stamp["files"] != _file_stats(store):
            return None
        states = [ShardState(**s) for s in stamp["shards"]]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None  # absent or damaged: check again
    return states if len(states) == store.layout.num_shards else None


def stamped_states(store: SyntheticStore) -> list[ShardState]:
    """Every shard's state, hashing only the shards the stamp does not vouch for; writes nothing.

    A shard whose (size, mtime, inode) are those of the last full check keeps that check's
    state; any other present shard (changed, replaced, or never checked) is hashed now. With no
    stamp, or a manifest changed since it, every shard is hashed. This is what decides whether
    ``generate`` is done, so a status check costs a ``stat`` per shard on a stamped store.
    """
    try:
        stamp = json.loads((store.path / STAMP).read_text())
        stamped_files, stamped = stamp["files"], {s["name"]: ShardState(**s) for s in stamp["shards"]}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        stamped_files, stamped = {}, {}
    stats = _file_stats(store)
    if stamped_files.get("manifest.json") != stats.get("manifest.json"):
        stamped = {}  # the records may have changed: nothing the stamp says still holds
    records = store.records()
    out = []
    for shard in range(store.layout.num_shards):
        name = store.shard_path(shard).name
        known = stamped.get(name)
        if known is not None and name in stats and stamped_files.get(name) == stats[name] and known.shard == shard:
            out.append(known)
        else:
            out.append(check_shard(store, shard, full=True, records=records))
    return out


def unknown_shards(store: SyntheticStore) -> list[str]:
    """Names of ``shard-*.npy`` files in the store that its layout does not have (another layout's, or strays)."""
    known = {store.shard_path(s).name for s in range(store.layout.num_shards)}
    return sorted(p.name for p in store.path.glob("shard-*.npy") if p.name not in known)


def unknown_note(store: SyntheticStore) -> str | None:
    """One line about shard files the manifest does not know (left alone: they may be someone's), or None."""
    names = unknown_shards(store)
    if not names:
        return None
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return (f"store {store.path} holds {len(names)} shard file{'s' if len(names) > 1 else ''} its manifest does not "
            f"know ({shown}; the manifest has shard-00000..shard-{store.layout.num_shards - 1:05d}): never read, "
            "left as they are; delete them if nobody needs them")


def verify(store: SyntheticStore) -> list[ShardState]:
    """A full check of every shard, stamped: this process does the hashing."""
    stats = _file_stats(store)  # before hashing: a shard that changes meanwhile makes the stamp stale
    states = check_store(store, full=True)
    write_stamp(store, states, stats)
    return states


def is_leader() -> bool:
    """Rank 0 of a torchrun (``RANK``) or Lightning-launched (``NODE_RANK``, ``LOCAL_RANK``) job; a lone process."""
    if "RANK" in os.environ:
        return os.environ["RANK"] == "0"
    return os.environ.get("NODE_RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def _barrier(name: str) -> None:
    if os.environ.get("MASTER_ADDR") and os.environ.get("RANK"):  # torch only where a launcher started processes
        from synthpos.distributed import wait_for_launched_processes

        wait_for_launched_processes(name)


def ensure_verified(store: SyntheticStore, policy: VerifyPolicy = "auto", raise_if_bad: bool = True) -> list[ShardState]:
    """Make sure the store was fully checked; return every shard's state.

    ``auto`` hashes only when no fresh stamp exists (first use, files changed or copied in);
    ``always`` hashes anyway. Under torchrun rank 0 hashes and stamps while the others wait
    at a barrier and then read its stamp; a process without a barrier (a Lightning-launched
    DDP process, which starts after rank 0 has verified) reads the stamp too, and hashes
    itself only if there is none. Every process must call this (it holds a barrier).

    Raises:
        SynthposError: a shard is missing or damaged (one line naming it and the fix), if ``raise_if_bad``.
    """
    states = None
    if is_leader():
        states = None if policy == "always" else fresh_stamp(store)
        if states is None:
            states = verify(store)
    _barrier("store-verify")
    if states is None:
        states = fresh_stamp(store) or verify(store)
    if raise_if_bad and (message := damage_message(store, states)):
        raise SynthposError(message)
    return states
