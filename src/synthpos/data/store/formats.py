"""The table of shard formats, and which one a store uses (``generate.store_format``).

A manifest without ``shard_format`` is a raw store (every store made before formats); a
format is added by its module and one line in :data:`FORMATS`.

``auto`` (the default) keeps an existing store's format, so a store is always resumed as it
was made. A new store is raw when its images are at most :data:`AUTO_RAW_MAX_SIDE` pixels a
side: a 64-px RGB candidate is 12 KiB raw, CIFAR-10 with K = 10 is 1.5 GB, and a
memory-mapped read is a slice where a decode costs a Pillow call per candidate. Above that
the raw bytes grow with the square of the side (150 KiB a 224-px candidate; GenerativeSSL's
10 variants of ImageNet are 1.9 TB raw) and a new store is JPEG at quality 95, 4:4:4: the
codec the published sets already use, with an error well below what the views' colour jitter
and blur add (its size on photographs is not measured here); or the codec of the files an
import brings in. PNG (or WebP at quality 100) where the candidates must stay exact.
"""

from __future__ import annotations

from typing import Any

from synthpos.data.store.encoded_shards import JpegShards, PngShards, WebpShards
from synthpos.data.store.npy_shards import NpyShards
from synthpos.data.store.shard_format import ShardFormat
from synthpos.errors import SynthposError

#: Shard formats by the name settings and manifests use.
FORMATS: dict[str, type[ShardFormat]] = {cls.name: cls for cls in (NpyShards, PngShards, JpegShards, WebpShards)}
#: What ``generate.store_format`` accepts.
STORE_FORMATS: tuple[str, ...] = ("auto", *FORMATS)
AUTO_RAW_MAX_SIDE = 64
_AUTO_ENCODED = "jpeg"


def format_of(manifest: dict[str, Any]) -> ShardFormat:
    """The shard format a manifest names (raw when it names none).

    Raises:
        SynthposError: the manifest names a format this synthpos does not know.
    """
    entry = manifest.get("shard_format")
    if entry is None:
        return NpyShards()
    name = entry.get("name") if isinstance(entry, dict) else None
    if name not in FORMATS:
        raise SynthposError(f"the store's manifest names shard format {name!r}, this synthpos reads "
                            f"{', '.join(FORMATS)}; upgrade synthpos or generate the store again")
    return FORMATS[name].from_entry(entry)


def choose_format(setting: str, image_shape: tuple[int, ...] | list[int], quality: int = 95,
                  existing: dict[str, Any] | None = None, prefer: str | None = None) -> ShardFormat:
    """The format of a store to create or resume.

    Args:
        setting: ``generate.store_format``: ``auto`` or a name in :data:`FORMATS`.
        image_shape: the store's (H, W, C).
        quality: JPEG and WebP quality (1..100).
        existing: the manifest of the store already there, if any (``auto`` keeps its format).
        prefer: the codec ``auto`` takes above :data:`AUTO_RAW_MAX_SIDE` (an import's own), instead of JPEG.

    Raises:
        SynthposError: an unknown ``setting``.
    """
    if setting == "auto":
        if existing is not None:
            return format_of(existing)
        if max(image_shape[:2]) <= AUTO_RAW_MAX_SIDE:
            return NpyShards()
        setting = prefer if prefer in FORMATS else _AUTO_ENCODED
    if setting not in FORMATS:
        raise SynthposError(f"generate.store_format={setting!r} is unknown; use one of {', '.join(STORE_FORMATS)}")
    return FORMATS[setting].from_entry({"name": setting, "quality": quality})
