"""The table of shard formats, and which one a store uses.

A manifest without ``shard_format`` is a raw store (every store made before formats); a
format is added by its module and one line in :data:`FORMATS`.
"""

from __future__ import annotations

from typing import Any

from synthpos.data.store.npy_shards import NpyShards
from synthpos.data.store.shard_format import ShardFormat
from synthpos.errors import SynthposError

#: Shard formats by the name settings and manifests use.
FORMATS: dict[str, type[ShardFormat]] = {NpyShards.name: NpyShards}


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
