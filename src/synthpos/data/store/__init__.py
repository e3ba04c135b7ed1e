"""The synthetic store: K generated candidates per anchor image, sharded on disk.

One concept a module:

- :mod:`.layout`: file names, and which anchors each shard holds (``StoreLayout``);
- :mod:`.manifest`: ``manifest.json``, the dataset fingerprint, the settings a store is made with;
- :mod:`.shard_format`: the interface a shard format implements; :mod:`.npy_shards` (raw
  ``.npy``) and the table of formats by name, :mod:`.formats`;
- :mod:`.records`: each shard's size and SHA-256, hashed as written, and their folding into the manifest;
- :mod:`.damage` and :mod:`.integrity`: what a check finds, the checks, the ``verified.json`` stamp;
- :mod:`.store`: ``SyntheticStore`` (create, open, write a shard, read candidates);
- :mod:`.importers`: the papers' published sets as stores (``synthpos import-store``);
- :mod:`.dataset`: ``SyntheticPositivesDataset``, a store as a ``torch.utils.data.Dataset``.

The old modules (``synthpos.data.synthetic_store``, ``store_integrity``, ``import_store``,
``store_dataset``) still import, re-exporting these.
"""

from synthpos.data.store.layout import StoreLayout
from synthpos.data.store.manifest import FORMAT_VERSION, dataset_fingerprint
from synthpos.data.store.store import SyntheticStore

__all__ = ["FORMAT_VERSION", "StoreLayout", "SyntheticStore", "dataset_fingerprint"]
