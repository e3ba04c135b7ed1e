"""Store integrity: every shard's size and content hash, checked cheaply on open and fully when needed.

Each shard's record (its byte size and SHA-256, :mod:`~synthpos.data.store.records`) is
computed from the bytes as they are written. Two levels of checking:

- **cheap, on every open**: each shard exists and has the size its shape implies (one
  ``stat`` per shard; for a format whose size the shape does not fix, the size its record
  says). A truncated or missing shard is found here.
- **full**: each shard's bytes hashed and compared with its record. A shard overwritten in
  place (zeros, flipped bytes) is found here. Done once after a store is written (the end
  of ``generate``), on ``inspect-store --verify``, and when a store is opened for training
  and no *stamp* (``verified.json``) says that these very files (size, modification time,
  inode of every shard and of the manifest) were verified. A copied-in store has new
  inodes, so it is verified on its first use. Under torchrun only rank 0 hashes; the others
  wait for it at a barrier and read its stamp.

A byte flipped in place by the disk without the modification time changing is only found by
a forced full check (``pretrain.verify_store=always``, ``inspect-store --verify``).

``synthpos.data.store_integrity`` is this module (the old path, kept for code that imports it
or patches :func:`file_digest` on it).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Literal

from synthpos.data.store.damage import (  # noqa: F401  (re-exported: the old module's names)
    ShardState, State, damage_message, unknown_note, unknown_shards, unrecorded_note,
)
from synthpos.data.store.layout import MANIFEST, STAMP
from synthpos.data.store.npy_shards import npy_size  # noqa: F401  (re-exported)
from synthpos.data.store.records import (  # noqa: F401  (HashingWriter, read_record: re-exported)
    HASH, HashingWriter, file_digest, read_record, write_json_atomically,
)
from synthpos.errors import SynthposError

if TYPE_CHECKING:
    from synthpos.data.store.store import SyntheticStore

VerifyPolicy = Literal["auto", "always"]


# ----------------------------------------------------------------------------- checking shards


def check_shard(store: SyntheticStore, shard: int, full: bool, records: dict[str, dict[str, Any]]) -> ShardState:
    """One shard's state: size from ``stat`` (always), its hash against its record (``full``)."""
    path = store.shard_path(shard)
    name = path.name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return ShardState(shard, name, "missing")
    record = records.get(name)
    exact = store.shard_format.exact_bytes(store.layout.shard_shape(shard))
    expected = exact if exact is not None else (record["bytes"] if record is not None else size)
    if size != expected:
        what = "truncated" if size < expected else "too long"
        return ShardState(shard, name, "wrong size", f"{what}: {size} bytes, expected {expected}")
    if record is not None and record["bytes"] != expected:
        return ShardState(shard, name, "damaged", f"its record says {record['bytes']} bytes, the layout {expected}")
    if not full:
        return ShardState(shard, name, "ok" if record is not None else "no hash")
    if record is None:
        # No hash to compare with (a store from before hashes): the header must still describe this shard.
        if not store.shard_format.describes(path, store.layout.shard_shape(shard)):
            return ShardState(shard, name, "damaged", "its header does not describe a uint8 shard of this store")
        return ShardState(shard, name, "no hash", "written before shards had hashes")
    if file_digest(path) != record[HASH]:
        return ShardState(shard, name, "damaged", f"its {HASH} differs from the one recorded when it was written")
    return ShardState(shard, name, "ok")


def check_store(store: SyntheticStore, full: bool) -> list[ShardState]:
    """Every shard's state, in shard order (``full``: hashes too)."""
    records = store.records()
    return [check_shard(store, s, full, records) for s in range(store.layout.num_shards)]


def require_complete_shards(store: SyntheticStore) -> None:
    """Raise unless every shard is present and of its size (a ``stat`` each, no hashing).

    Raises:
        SynthposError: a shard truncated, padded or at odds with its record; or shards missing (the store unfinished).
    """
    states = check_store(store, full=False)
    if any(s.bad and s.state != "missing" for s in states):
        raise SynthposError(damage_message(store, states))
    if missing := [s.name for s in states if s.state == "missing"]:
        names = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise SynthposError(
            f"store {store.path} is incomplete ({len(missing)} of {store.layout.num_shards} shards missing: {names}); "
            "run `synthpos generate` with the config that made it to finish it"
        )


# ----------------------------------------------------------------------------- the verification stamp


def _file_stats(store: SyntheticStore) -> dict[str, list[int]]:
    """(size, mtime_ns, inode) of the manifest and of every shard present: what a stamp vouches for."""
    stats = {}
    for path in [store.path / MANIFEST, *(store.shard_path(s) for s in range(store.layout.num_shards))]:
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
    if stamped_files.get(MANIFEST) != stats.get(MANIFEST):
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


def verify(store: SyntheticStore, stamp: bool = True) -> list[ShardState]:
    """A full check of every shard, stamped unless ``stamp`` is False (a store another process is writing: a reader
    writes nothing into it); this process does the hashing."""
    stats = _file_stats(store)  # before hashing: a shard that changes meanwhile makes the stamp stale
    states = check_store(store, full=True)
    if stamp:
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
