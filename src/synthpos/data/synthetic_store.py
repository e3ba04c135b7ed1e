"""The old path of the synthetic store: re-exports :mod:`synthpos.data.store` (the package holds the code)."""

from synthpos.data.store.layout import StoreLayout
from synthpos.data.store.manifest import FORMAT_VERSION, dataset_fingerprint
from synthpos.data.store.store import SyntheticStore

__all__ = ["FORMAT_VERSION", "StoreLayout", "SyntheticStore", "dataset_fingerprint"]
