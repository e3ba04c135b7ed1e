"""The old path of the store importers: re-exports :mod:`synthpos.data.store.importers`."""

from synthpos.data.store.importers import LAYOUTS, Layout, import_store, import_store_stage, read_clsp_array, variant_paths

__all__ = ["LAYOUTS", "Layout", "import_store", "import_store_stage", "read_clsp_array", "variant_paths"]
