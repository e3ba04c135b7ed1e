"""The store's manifest: what made it (dataset fingerprint, generator, K, shape, shard size) and its records.

``manifest.json`` is written once when a store is created (first complete writer wins, so
torchrun ranks creating one store agree) and rewritten whole only when ``generate`` folds the
shard records into it. Reading one checks every field it must hold, so a damaged manifest is
one line naming the file and the fix, never a ``KeyError`` later.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from synthpos.atomic import publish_once
from synthpos.data.store.layout import MANIFEST
from synthpos.errors import SynthposError

FORMAT_VERSION = 1
#: The format version of a store of encoded shards: an older synthpos refuses it in one line, where it would
#: otherwise look for ``.npy`` shards and call the store incomplete.
ENCODED_FORMAT_VERSION = 2
_SAMPLES = 64
# What a manifest must hold, and of which JSON type, to be read at all (anything else is damage).
_MANIFEST_FIELDS: dict[str, type] = {
    "dataset": dict, "num_anchors": int, "candidates": int, "image_shape": list, "shard_size": int, "generator": dict,
}
_FINGERPRINT_FIELDS = {"name": str, "split": str, "count": int, "image_shape": list, "sample_hashes": dict}
#: The settings a store is made with: reopening it with any other is an error, not a resume.
SETTINGS = ("dataset", "num_anchors", "candidates", "image_shape", "shard_size", "generator", "shard_format")


def _image_hash(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()[:16]


def dataset_fingerprint(name: str, split: str, images: np.ndarray) -> dict[str, Any]:
    """What identifies the anchors a store was made from.

    name, split, count and shape, plus a SHA-256 of each of up to 64 images spread
    evenly over the anchors (and one hash over all of those). Per-image hashes let a
    store made for N anchors be checked against a dataset that uses its first M <= N.

    Args:
        images: uint8. Shape: (N, H, W, C).
    """
    count = len(images)
    indices = np.unique(np.linspace(0, count - 1, num=min(count, _SAMPLES)).round().astype(np.int64))
    samples = {str(int(i)): _image_hash(images[i]) for i in indices}
    content = hashlib.sha256("".join(samples.values()).encode()).hexdigest()[:16]
    return {
        "name": name,
        "split": split,
        "count": int(count),
        "image_shape": list(images.shape[1:]),
        "content_hash": content,
        "sample_hashes": samples,
    }


def new_manifest(fingerprint: dict[str, Any], candidates: int, shard_size: int, generator: dict[str, Any],
                 provenance: dict[str, Any] | None, shard_format: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of a new store (no shards recorded yet); ``shard_format`` None: a raw store."""
    return {
        "format_version": FORMAT_VERSION if shard_format is None else ENCODED_FORMAT_VERSION,
        "dataset": fingerprint,
        "num_anchors": fingerprint["count"],
        "candidates": candidates,
        "image_shape": fingerprint["image_shape"],
        "dtype": "uint8",
        "shard_size": shard_size,
        "generator": generator,
        **({} if provenance is None else {"provenance": provenance}),
        **({} if shard_format is None else {"shard_format": shard_format}),
    }


def publish_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write a new store's manifest unless one is there; another process (a torchrun rank) may win."""
    if not (path / MANIFEST).is_file():
        path.mkdir(parents=True, exist_ok=True)
        publish_once(path / MANIFEST, json.dumps(manifest, indent=2))


def check_same_settings(path: Path, existing: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Raise unless the store at ``path`` (manifest ``existing``) was made with ``wanted``'s settings."""
    for key in SETTINGS:
        if existing.get(key) != wanted.get(key):
            raise SynthposError(
                f"store {path} was made with a different {key}; to keep it, restore the settings it was made "
                f"with, or pass another generate.store (or delete {path}) to make a new one"
            )


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the store at ``path``, every field it must hold checked.

    Raises:
        SynthposError: no manifest, not JSON, another format version, or a field missing or impossible.
    """
    manifest_path = path / MANIFEST
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
    version = FORMAT_VERSION if "shard_format" not in manifest else ENCODED_FORMAT_VERSION
    if manifest.get("format_version") != version:
        raise SynthposError(
            f"store {path} has format version {manifest.get('format_version')}, this synthpos reads {version}; "
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


def check_dataset(path: Path, manifest: dict[str, Any], name: str, split: str, images: np.ndarray) -> None:
    """Raise unless ``images`` (uint8 (M, H, W, C)) are (the first anchors of) the dataset the store was made from."""
    made = manifest["dataset"]
    fix = "generate a store for this dataset, or point pretrain.store at the right one"
    if made["name"] != name or made["split"] != split:
        raise SynthposError(f"store {path} was made for {made['name']}/{made['split']}, not {name}/{split}; {fix}")
    if list(images.shape[1:]) != list(made["image_shape"]):
        raise SynthposError(
            f"store {path} holds {tuple(made['image_shape'])} images, the dataset has {tuple(images.shape[1:])}; "
            f"set data.image_size to match, or {fix}"
        )
    if len(images) > made["count"]:
        raise SynthposError(
            f"store {path} has candidates for {made['count']} anchors but the dataset has {len(images)} images; "
            f"set data.subset={made['count']} or generate for more anchors"
        )
    for index, digest in made["sample_hashes"].items():
        i = int(index)
        if i < len(images) and _image_hash(images[i]) != digest:
            raise SynthposError(f"store {path} was made from different images (image {i} differs); {fix}")
