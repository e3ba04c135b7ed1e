"""The synthetic store: K generated candidates for each anchor image, on disk.

A store is a directory::

    manifest.json            format version, dataset fingerprint, generator, K, shape,
                             every shard's byte size and SHA-256 ("shards")
    shard-00000.npy          uint8 (n, K, H, W, C) for anchors [0, shard_size)
    shard-00001.npy          ... the next range
    shard-00001.record.json  a shard's size and hash until generate folds it into the manifest
    verified.json            the stamp of the last full check (see store_integrity)

A shard is written to a temporary name and renamed when complete, so a crash never
leaves a half-written shard under a real name; re-running generation fills only the
missing and damaged shards. Opening a store checks every shard's size, and for a dataset
other than the one it was made from is an error. Reads are memory-mapped: the store is
never loaded whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthpos.atomic import atomic_path, publish_once
from synthpos.data.store_integrity import (
    HashingWriter, VerifyPolicy, check_store, damage_message, ensure_verified, is_leader, npy_size, read_record,
    unrecorded_note, write_json_atomically,
)
from synthpos.errors import SynthposError

FORMAT_VERSION = 1
_SAMPLES = 64
_RECORD_SUFFIX = ".record.json"
# What a manifest must hold, and of which JSON type, to be read at all (anything else is damage).
_MANIFEST_FIELDS: dict[str, type] = {
    "dataset": dict, "num_anchors": int, "candidates": int, "image_shape": list, "shard_size": int, "generator": dict,
}
_FINGERPRINT_FIELDS = {"name": str, "split": str, "count": int, "image_shape": list, "sample_hashes": dict}


def dataset_fingerprint(name: str, split: str, images: np.ndarray) -> dict[str, Any]:
    """What identifies the anchors a store was made from.

    name, split, count and shape, plus a SHA-256 of each of up to 64 images spread
    evenly over the anchors (and one hash over all of those). Per-image hashes let a
    store made for N anchors be checked against a dataset that uses its first M <= N.
    """
    count = len(images)
    indices = np.unique(np.linspace(0, count - 1, num=min(count, _SAMPLES)).round().astype(np.int64))
    samples = {str(int(i)): hashlib.sha256(np.ascontiguousarray(images[i]).tobytes()).hexdigest()[:16] for i in indices}
    content = hashlib.sha256("".join(samples.values()).encode()).hexdigest()[:16]
    return {
        "name": name,
        "split": split,
        "count": int(count),
        "image_shape": list(images.shape[1:]),
        "content_hash": content,
        "sample_hashes": samples,
    }


@dataclass(frozen=True)
class StoreLayout:
    num_anchors: int
    candidates: int
    image_shape: tuple[int, int, int]  # (H, W, C)
    shard_size: int

    @property
    def num_shards(self) -> int:
        return -(-self.num_anchors // self.shard_size)

    def shard_range(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.num_anchors)


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
        self._maps: dict[int, np.ndarray] = {}

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
    ) -> SyntheticStore:
        """Create a store, or reopen an existing one made with the same settings (to resume).

        ``provenance`` (:mod:`synthpos.provenance`) is recorded in a new manifest and never compared:
        a store made by another commit or version is resumed all the same, and keeps its own.

        Raises:
            SynthposError: ``path`` holds a store made for other data or other settings.
        """
        path = Path(path)
        manifest = {
            "format_version": FORMAT_VERSION,
            "dataset": fingerprint,
            "num_anchors": fingerprint["count"],
            "candidates": candidates,
            "image_shape": fingerprint["image_shape"],
            "dtype": "uint8",
            "shard_size": shard_size,
            "generator": generator,
            **({} if provenance is None else {"provenance": provenance}),
        }
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            path.mkdir(parents=True, exist_ok=True)
            publish_once(manifest_path, json.dumps(manifest, indent=2))  # another process may win
        # Also when this process just wrote it: another one (a torchrun rank) may have won.
        existing = cls._read_manifest(path)
        for key in ("dataset", "num_anchors", "candidates", "image_shape", "shard_size", "generator"):
            if existing.get(key) != manifest[key]:
                raise SynthposError(
                    f"store {path} was made with a different {key}; to keep it, restore the settings it was made "
                    f"with, or pass another generate.store (or delete {path}) to make a new one"
                )
        return cls(path, existing)

    @staticmethod
    def _read_manifest(path: Path) -> dict[str, Any]:
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise SynthposError(
                f"no synthetic store at {path} (manifest.json missing); make one with `synthpos generate --config FILE`"
            )
        fix = ("copy the store again from where it came from, or delete the store and run `synthpos generate` "
               "to make it anew")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SynthposError(f"{manifest_path} is damaged (not valid JSON); {fix}") from err
        if not isinstance(manifest, dict):
            raise SynthposError(f"{manifest_path} is damaged (not a JSON object); {fix}")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise SynthposError(
                f"store {path} has format version {manifest.get('format_version')}, this synthpos reads {FORMAT_VERSION}; "
                "generate the store again"
            )
        for fields, within in ((_MANIFEST_FIELDS, manifest), (_FINGERPRINT_FIELDS, manifest.get("dataset"))):
            for key, kind in fields.items():
                if not isinstance(within, dict) or not isinstance(within.get(key), kind) or isinstance(within.get(key), bool):
                    raise SynthposError(f"{manifest_path} is damaged ({key} missing or not a {kind.__name__}); {fix}")
        shape, shards = manifest["image_shape"], manifest.get("shards", {})
        if (len(shape) != 3 or not all(isinstance(v, int) and v > 0 for v in shape) or manifest["shard_size"] < 1
                or manifest["candidates"] < 1 or manifest["num_anchors"] < 1 or not isinstance(shards, dict)):
            raise SynthposError(f"{manifest_path} is damaged (impossible image_shape, sizes or shards); {fix}")
        return manifest

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
                verified, ``always`` in any case (see :func:`~synthpos.data.store_integrity.ensure_verified`;
                under torchrun every process must pass the same value).

        Raises:
            SynthposError: the store is missing, incomplete, damaged, or made for other data.
        """
        path = Path(path)
        store = cls(path, cls._read_manifest(path))
        if images is not None:
            store.check_dataset(name or "", split or "", images)
        if require_complete:
            states = check_store(store, full=False)  # a stat per shard: missing, truncated, padded
            if any(s.bad and s.state != "missing" for s in states):
                raise SynthposError(damage_message(store, states))
            if missing := [s.name for s in states if s.state == "missing"]:
                names = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
                raise SynthposError(
                    f"store {path} is incomplete ({len(missing)} of {store.layout.num_shards} shards missing: {names}); "
                    "run `synthpos generate` with the config that made it to finish it"
                )
        if verify is not None:
            states = ensure_verified(store, verify)
            if (note := unrecorded_note(store, states)) and is_leader():
                print(f"note: {note}", file=sys.stderr)
        return store

    def check_dataset(self, name: str, split: str, images: np.ndarray) -> None:
        """Raise unless ``images`` are (the first anchors of) the dataset this store was made from."""
        made = self.manifest["dataset"]
        fix = "generate a store for this dataset, or point pretrain.store at the right one"
        if made["name"] != name or made["split"] != split:
            raise SynthposError(
                f"store {self.path} was made for {made['name']}/{made['split']}, not {name}/{split}; {fix}"
            )
        if list(images.shape[1:]) != list(made["image_shape"]):
            raise SynthposError(
                f"store {self.path} holds {tuple(made['image_shape'])} images, the dataset has {tuple(images.shape[1:])}; "
                f"set data.image_size to match, or {fix}"
            )
        if len(images) > made["count"]:
            raise SynthposError(
                f"store {self.path} has candidates for {made['count']} anchors but the dataset has {len(images)} images; "
                f"set data.subset={made['count']} or generate for more anchors"
            )
        for index, digest in made["sample_hashes"].items():
            i = int(index)
            if i < len(images) and hashlib.sha256(np.ascontiguousarray(images[i]).tobytes()).hexdigest()[:16] != digest:
                raise SynthposError(
                    f"store {self.path} was made from different images (image {i} differs); {fix}"
                )

    # ------------------------------------------------------------------ shards

    def shard_path(self, shard: int) -> Path:
        return self.path / f"shard-{shard:05d}.npy"

    def record_path(self, shard: int) -> Path:
        return self.path / f"shard-{shard:05d}{_RECORD_SUFFIX}"

    def expected_bytes(self, shard: int) -> int:
        """The file size of a complete shard (the .npy header and its uint8 data)."""
        start, end = self.layout.shard_range(shard)
        return npy_size((end - start, self.layout.candidates, *self.layout.image_shape))

    def missing_shards(self) -> list[int]:
        return [s for s in range(self.layout.num_shards) if not self.shard_path(s).is_file()]

    def wrong_size_shards(self) -> list[int]:
        """Shards present whose size is not their shape's (truncated or padded): a ``stat`` each."""
        wrong = []
        for s in range(self.layout.num_shards):
            try:
                if self.shard_path(s).stat().st_size != self.expected_bytes(s):
                    wrong.append(s)
            except FileNotFoundError:
                continue
        return wrong

    @property
    def complete(self) -> bool:
        """Every shard present and of the right size (hashes are :func:`ensure_verified`'s business)."""
        return not self.missing_shards() and not self.wrong_size_shards()

    def records(self) -> dict[str, dict[str, Any]]:
        """Each shard's size and hash as written: the manifest's, overridden by newer record files."""
        records = dict(self.manifest.get("shards", {}))
        for path in sorted(self.path.glob(f"shard-*{_RECORD_SUFFIX}")):
            record = read_record(path)
            name = path.name[: -len(_RECORD_SUFFIX)] + ".npy"
            if record is None:
                records.pop(name, None)  # an unreadable record vouches for nothing
            else:
                records[name] = record
        return records

    def add_record(self, shard: int, record: dict[str, Any]) -> None:
        """Keep a shard's size and hash beside it until :meth:`fold_records` moves it into the manifest."""
        write_json_atomically(self.record_path(shard), record)

    def fold_records(self) -> bool:
        """Move the record files of present shards into ``manifest.json`` (atomically); return whether it changed.

        One process only (rank 0 after generation's barrier): the manifest is rewritten whole.
        """
        records = self.records()
        present = {self.shard_path(s).name for s in range(self.layout.num_shards) if self.shard_path(s).is_file()}
        shards = {name: records[name] for name in sorted(records) if name in present}
        files = list(self.path.glob(f"shard-*{_RECORD_SUFFIX}"))
        if shards == self.manifest.get("shards", {}) and not files:
            return False
        manifest = {**self.manifest, "shards": shards}
        write_json_atomically(self.path / "manifest.json", manifest)
        self.manifest = manifest
        for path in files:
            path.unlink(missing_ok=True)
        return True

    def write_shard(self, shard: int, candidates: np.ndarray) -> None:
        """Write one shard atomically: a temporary file, flushed, then renamed.

        Args:
            candidates: uint8. Shape: (n, K, H, W, C), n = the shard's anchor count.
        """
        start, end = self.layout.shard_range(shard)
        expected = (end - start, self.layout.candidates, *self.layout.image_shape)
        if candidates.dtype != np.uint8 or candidates.shape != expected:
            raise ValueError(f"shard {shard} must be uint8 {expected}, got {candidates.dtype} {candidates.shape}")
        final = self.shard_path(shard)
        with atomic_path(final) as tmp:
            with open(tmp, "wb") as fh:
                writer = HashingWriter(fh)  # hashes the bytes as they are written: no second read
                np.save(writer, candidates)
                fh.flush()
                os.fsync(fh.fileno())
            # The record first, then the shard under its name: a present shard always has its record.
            self.add_record(shard, writer.record())

    def _shard(self, shard: int) -> np.ndarray:
        if shard not in self._maps:
            path = self.shard_path(shard)
            fix = "run `synthpos generate` with the config that made the store to remake it"
            if not path.is_file():
                raise SynthposError(f"store {self.path} is missing {path.name}; {fix}")
            start, end = self.layout.shard_range(shard)
            want = (end - start, self.layout.candidates, *self.layout.image_shape)
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as err:  # a header overwritten, a file cut short
                raise SynthposError(f"store {self.path}: {path.name} is damaged ({err}); {fix}") from err
            if array.dtype != np.uint8 or array.shape != want:
                raise SynthposError(f"store {self.path}: {path.name} is damaged (holds {array.dtype} {array.shape}, "
                                    f"expected uint8 {want}); {fix}")
            # A plain ndarray view of the map: np.memmap's subclass hooks cost on every fancy index.
            self._maps[shard] = np.asarray(array)
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
