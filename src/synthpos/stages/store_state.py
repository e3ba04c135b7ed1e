"""The generate stage's output, as the table sees it: whether the store is finished, what
is odd about it, what it still needs, and whether pretraining may read it.

Read-only: nothing here writes, so the table may ask before the run's lock is taken.
"""

from __future__ import annotations

import json
from typing import Any

from synthpos.config import RunConfig
from synthpos.errors import SynthposError


def store_feeds(config: RunConfig) -> str | None:
    """None when pretraining reads a store: the synthetic mode says (``needs_store``: ``none`` and ``mochi`` read
    none; ``synthetic``: ``none`` adds nothing synthetic at all)."""
    from synthpos.registry import MODES

    mode = MODES.get(config.pretrain.synthetic.mode)
    if not mode.synthetic:
        return "no synthetic positives in this run"
    return None if mode.needs_store else f"pretrain.synthetic.mode={mode.name} needs no store"


def manifest_matches(config: RunConfig, generator: dict[str, Any]) -> str | None:
    """A store made before stage records: its manifest's generator record is ``generator`` (the record the
    run's generator would write) and it holds the run's candidates per anchor; None when not, or unreadable."""
    try:
        manifest = json.loads((config.store_dir / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same = manifest.get("generator") == generator and manifest.get("candidates") == config.generate.candidates
    return "its manifest's generator record matches" if same else None


def open_store(config: RunConfig):
    """The run's finished store (what a done generate stage returns)."""
    from synthpos.data.synthetic_store import SyntheticStore

    return SyntheticStore.open(config.store_dir)


def store_finished(config: RunConfig) -> bool:
    """Every shard present and matching its recorded hash: a store that does not verify is not done.

    Shards the stamp of the last full check vouches for (same size, mtime, inode) are not hashed
    again; a shard changed since (zeroed in place, copied over) is. Writes nothing.
    """
    from synthpos.data.store_integrity import stamped_states
    from synthpos.data.synthetic_store import SyntheticStore

    if not (config.store_dir / "manifest.json").is_file():
        return False
    try:
        store = SyntheticStore.open(config.store_dir, require_complete=False)
    except SynthposError:
        return False
    return not any(state.bad for state in stamped_states(store))


def store_notes(config: RunConfig) -> list[str]:
    """Shard files the store's manifest does not know: reported, never read or removed."""
    from synthpos.data.store_integrity import unknown_note
    from synthpos.data.synthetic_store import SyntheticStore

    if not (config.store_dir / "manifest.json").is_file():
        return []
    try:
        note = unknown_note(SyntheticStore.open(config.store_dir, require_complete=False))
    except SynthposError:
        return []
    return [note] if note else []


def store_space(config: RunConfig) -> tuple[int | None, str | None]:
    """The bytes of the shards still to write (missing or of the wrong size): what a full disk must make room for."""
    from synthpos.data.store_integrity import check_store
    from synthpos.data.synthetic_store import SyntheticStore

    try:
        store = SyntheticStore.open(config.store_dir, require_complete=False)
    except SynthposError:
        return None, "the synthetic store"
    todo = [s.shard for s in check_store(store, full=False) if s.bad]
    return sum(store.expected_bytes(s) for s in todo) or None, f"the synthetic store: {len(todo)} shards to write"


def check_store_input(config: RunConfig) -> None:
    """The store pretraining reads opens, is complete and verifies (its stamp spares the hashing when fresh).

    Read-only, as it runs before the lock: a store no stamp vouches for (copied in) is hashed here
    and again, stamped, by pretraining's own check.
    """
    if store_feeds(config) is not None:
        return
    from synthpos.data.store_integrity import damage_message, stamped_states
    from synthpos.data.synthetic_store import SyntheticStore

    key = "pretrain.store" if config.pretrain.store or config.generate.store else "the run's store"
    try:
        store = SyntheticStore.open(config.store_dir)  # manifest readable, every shard there and of its size
    except SynthposError as err:
        raise SynthposError(f"{key}: {err}") from None
    if message := damage_message(store, stamped_states(store)):
        raise SynthposError(message)
