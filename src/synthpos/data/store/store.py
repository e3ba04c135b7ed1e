"""The synthetic store: K generated candidates for each anchor image, on disk.

Files as :mod:`.layout` names them; what made the store in its :mod:`.manifest`; each shard one
file in the store's format (:mod:`.shard_format`: raw ``.npy``, memory-mapped, by default),
written whole or not at all (:mod:`.shards`), so re-running generation fills only the missing
and damaged shards. Opening a store checks every shard's size, and for a dataset other than
the one it was made from is an error. The store is never loaded whole.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synthpos.data.store.encoded_shards import EncodedShards
from synthpos.data.store.formats import choose_format, format_of
from synthpos.data.store.integrity import (
    VerifyPolicy, check_store, ensure_verified, is_leader, require_complete_shards, unrecorded_note,
)
from synthpos.data.store.layout import MANIFEST, StoreLayout, record_name, shard_stem
from synthpos.data.store.manifest import check_dataset, check_same_settings, new_manifest, publish_manifest, read_manifest
from synthpos.data.store.records import collect_records, fold_records, write_json_atomically
from synthpos.data.store.shard_format import ShardFormat, ShardReader
from synthpos.data.store.shards import open_shard, write_shard_file


class SyntheticStore:
    """K candidates per anchor, sharded, resumable, memory-mapped.

    Example:
        >>> store = SyntheticStore.open("runs/fmnist/store", dataset)  # checks the fingerprint
        >>> store[12].shape            # the K candidates of anchor 12
        (8, 28, 28, 1)
        >>> store.get(np.array([3, 5]), np.array([0, 7])).shape
        (2, 28, 28, 1)
    """

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.layout = StoreLayout(
            num_anchors=manifest["num_anchors"],
            candidates=manifest["candidates"],
            image_shape=tuple(manifest["image_shape"]),
            shard_size=manifest["shard_size"],
        )
        self.shard_format: ShardFormat = format_of(manifest)
        self._maps: dict[int, ShardReader] = {}

    # ------------------------------------------------------------------ creation and opening

    @classmethod
    def create(
        cls,
        path: Path | str,
        fingerprint: dict[str, Any],
        candidates: int,
        shard_size: int,
        generator: dict[str, Any],
        provenance: dict[str, Any] | None = None,
        store_format: str = "raw",
        quality: int = 95,
        prefer: str | None = None,
    ) -> SyntheticStore:
        """Create a store, or reopen an existing one made with the same settings (to resume).

        ``provenance`` (:mod:`synthpos.provenance`) is recorded in a new manifest and never compared:
        a store made by another commit or version is resumed all the same, and keeps its own.
        ``store_format``, ``quality``, ``prefer``: the shard format (``generate.store_format``, see
        :func:`~synthpos.data.store.formats.choose_format`; ``auto`` keeps an existing store's).

        Raises:
            SynthposError: ``path`` holds a store made for other data or other settings.
        """
        path = Path(path)
        existing = read_manifest(path) if (path / MANIFEST).is_file() else None
        chosen = choose_format(store_format, fingerprint["image_shape"], quality, existing, prefer)
        manifest = new_manifest(fingerprint, candidates, shard_size, generator, provenance, chosen.manifest_entry())
        publish_manifest(path, manifest)
        # Also when this process just wrote it: another one (a torchrun rank) may have won.
        existing = read_manifest(path)
        check_same_settings(path, existing, manifest)
        return cls(path, existing)

    @staticmethod
    def _read_manifest(path: Path) -> dict[str, Any]:
        return read_manifest(path)

    @classmethod
    def open(cls, path: Path | str, name: str | None = None, split: str | None = None,
             images: np.ndarray | None = None, require_complete: bool = True,
             verify: VerifyPolicy | None = None) -> SyntheticStore:
        """Open a store and check it belongs to the given anchors.

        Args:
            name, split, images: the dataset it will be used with; ``images`` are its
                first M anchors (uint8 (M, H, W, C)), M <= the store's anchors.
            require_complete: every shard must be present and of the right size (one ``stat`` each).
            verify: also check the shards' hashes: ``auto`` unless a stamp says these files were
                verified, ``always`` in any case (see :func:`~synthpos.data.store.integrity.ensure_verified`;
                under torchrun every process must pass the same value).

        Raises:
            SynthposError: the store is missing, incomplete, damaged, or made for other data.
        """
        path = Path(path)
        store = cls(path, read_manifest(path))
        if images is not None:
            store.check_dataset(name or "", split or "", images)
        if require_complete:
            require_complete_shards(store)  # a stat per shard: missing, truncated, padded
        if verify is not None:
            states = ensure_verified(store, verify)
            if (note := unrecorded_note(store, states)) and is_leader():
                print(f"note: {note}", file=sys.stderr)
        return store

    def check_dataset(self, name: str, split: str, images: np.ndarray) -> None:
        """Raise unless ``images`` are (the first anchors of) the dataset this store was made from."""
        check_dataset(self.path, self.manifest, name, split, images)

    # ------------------------------------------------------------------ shards and their records

    def shard_path(self, shard: int) -> Path:
        return self.path / (shard_stem(shard) + self.shard_format.suffix)

    def record_path(self, shard: int) -> Path:
        return self.path / record_name(shard)

    def expected_bytes(self, shard: int) -> int:
        """The file size of a complete shard: exact for raw shards, the raw size as an upper bound for encoded ones."""
        shape = self.layout.shard_shape(shard)
        exact = self.shard_format.exact_bytes(shape)
        return exact if exact is not None else int(np.prod(shape))

    def missing_shards(self) -> list[int]:
        return [s for s in range(self.layout.num_shards) if not self.shard_path(s).is_file()]

    def wrong_size_shards(self) -> list[int]:
        """Shards present whose size is not their shape's (truncated or padded): a ``stat`` each."""
        return [s.shard for s in check_store(self, full=False) if s.state == "wrong size"]

    @property
    def complete(self) -> bool:
        """Every shard present and of the right size (hashes are :func:`ensure_verified`'s business)."""
        return not self.missing_shards() and not self.wrong_size_shards()

    def records(self) -> dict[str, dict[str, Any]]:
        """Each shard's size and hash as written: the manifest's, overridden by newer record files."""
        return collect_records(self.path, self.manifest, self.shard_format.suffix)

    def add_record(self, shard: int, record: dict[str, Any]) -> None:
        """Keep a shard's size and hash beside it until :meth:`fold_records` moves it into the manifest."""
        write_json_atomically(self.record_path(shard), record)

    def fold_records(self) -> bool:
        """Move the record files of present shards into ``manifest.json`` (atomically); return whether it changed.

        One process only (rank 0 after generation's barrier): the manifest is rewritten whole.
        """
        present = {self.shard_path(s).name for s in range(self.layout.num_shards) if self.shard_path(s).is_file()}
        manifest = fold_records(self.path, self.manifest, self.shard_format.suffix, present)
        if manifest is None:
            return False
        self.manifest = manifest
        return True

    def write_shard(self, shard: int, candidates: np.ndarray) -> None:
        """Write one shard atomically (a temporary file, flushed, then renamed), in the store's format.

        Args:
            candidates: uint8. Shape: (n, K, H, W, C), n = the shard's anchor count.
        """
        expected = self.layout.shard_shape(shard)
        if candidates.dtype != np.uint8 or candidates.shape != expected:
            raise ValueError(f"shard {shard} must be uint8 {expected}, got {candidates.dtype} {candidates.shape}")
        write_shard_file(self.shard_path(shard), self.record_path(shard),
                         lambda out: self.shard_format.write(out, candidates))

    def write_encoded_shard(self, shard: int, blobs: Sequence[bytes]) -> None:
        """Write one shard of image files already in the store's codec, kept byte for byte (imports).

        Args:
            blobs: the files' bytes, anchor-major: n * K of them, n = the shard's anchor count.
        """
        if not isinstance(self.shard_format, EncodedShards):
            raise ValueError(f"store {self.path} holds {self.shard_format.name} shards, not encoded images")
        shape = self.layout.shard_shape(shard)
        write_shard_file(self.shard_path(shard), self.record_path(shard),
                         lambda out: self.shard_format.write_encoded(out, blobs, shape))

    def _shard(self, shard: int) -> ShardReader:
        if shard not in self._maps:
            self._maps[shard] = open_shard(self.path, self.shard_path(shard), self.shard_format,
                                           self.layout.shard_shape(shard))
        return self._maps[shard]

    # ------------------------------------------------------------------ reads

    def __len__(self) -> int:
        return self.layout.num_anchors

    @property
    def candidates(self) -> int:
        return self.layout.candidates

    def __getitem__(self, anchor: int) -> np.ndarray:
        """The K candidates of one anchor. Shape: (K, H, W, C)."""
        if not 0 <= anchor < self.layout.num_anchors:
            raise IndexError(f"anchor {anchor} outside 0..{self.layout.num_anchors - 1}")
        shard, offset = divmod(anchor, self.layout.shard_size)
        return self._shard(shard)[offset]

    def get(self, anchors: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """One chosen candidate per anchor. Shape: (B, H, W, C)."""
        anchors = np.asarray(anchors, dtype=np.int64)
        candidates = np.asarray(candidates, dtype=np.int64)
        if anchors.shape != candidates.shape or anchors.ndim != 1:
            raise ValueError(f"need one candidate index per anchor: anchors {anchors.shape}, candidates {candidates.shape}")
        # Checked here: an anchor past the end would otherwise read as a missing shard, and
        # a negative candidate would silently wrap around.
        if len(anchors) and not (0 <= anchors.min() and anchors.max() < self.layout.num_anchors):
            raise IndexError(f"anchor indices must be in 0..{self.layout.num_anchors - 1}, got {anchors.min()}..{anchors.max()}")
        if len(candidates) and not (0 <= candidates.min() and candidates.max() < self.layout.candidates):
            raise IndexError(f"candidate indices must be in 0..{self.layout.candidates - 1}, got {candidates.min()}..{candidates.max()}")
        out = np.empty((len(anchors), *self.layout.image_shape), dtype=np.uint8)
        shards, offsets = np.divmod(anchors, self.layout.shard_size)
        # One sort, then one fancy-index per shard touched (a mask per shard was O(B) each).
        order = np.argsort(shards, kind="stable")
        ordered = shards[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(order) else np.empty(0, np.int64)
        ends = np.r_[starts[1:], len(order)]
        for start, end, shard in zip(starts.tolist(), ends.tolist(), ordered[starts].tolist()):
            rows = order[start:end]
            out[rows] = self._shard(shard)[offsets[rows], candidates[rows]]
        return out

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps are reopened lazily in each DataLoader worker.
        return {"path": self.path, "manifest": self.manifest}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["manifest"])
