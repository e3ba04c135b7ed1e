"""What a check of a store finds: each shard's state, and the lines that tell a user about it.

Missing, damaged and unrecorded shards, and shard files the manifest does not know, each
become one line naming them and the fix. Checking itself is :mod:`~synthpos.data.store.integrity`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from synthpos.data.store.layout import RECORD_SUFFIX, SHARD_PREFIX

if TYPE_CHECKING:
    from synthpos.data.store.store import SyntheticStore

#: A shard's state after a check. "no hash": written before stores recorded hashes (size and header are right).
State = Literal["ok", "missing", "wrong size", "damaged", "no hash"]
_BAD: frozenset[str] = frozenset({"missing", "wrong size", "damaged"})


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


def unknown_shards(store: SyntheticStore) -> list[str]:
    """Names of shard files in the store that its layout does not have (another layout's or format's, or strays)."""
    known = {store.shard_path(s).name for s in range(store.layout.num_shards)}
    return sorted(p.name for p in store.path.glob(f"{SHARD_PREFIX}*{store.shard_format.suffix}")
                  if p.name not in known and not p.name.endswith(RECORD_SUFFIX))


def unknown_note(store: SyntheticStore) -> str | None:
    """One line about shard files the manifest does not know (left alone: they may be someone's), or None."""
    names = unknown_shards(store)
    if not names:
        return None
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return (f"store {store.path} holds {len(names)} shard file{'s' if len(names) > 1 else ''} its manifest does not "
            f"know ({shown}; the manifest has shard-00000..shard-{store.layout.num_shards - 1:05d}): never read, "
            "left as they are; delete them if nobody needs them")
