"""The old path of the store's torch Dataset: re-exports :mod:`synthpos.data.store.dataset`."""

from synthpos.data.store.dataset import SyntheticPositivesDataset, Transform

__all__ = ["SyntheticPositivesDataset", "Transform"]
