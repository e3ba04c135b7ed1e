"""Import tests/plugins/scratch_components.py the way a user's module is: copied to a folder outside synthpos."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path
from types import ModuleType

SOURCE = Path(__file__).with_name("scratch_components.py")
MODULE = "scratch_components"


def write_plugin(folder: Path) -> Path:
    """Copy the plugin module into ``folder``; returns the folder (to put on PYTHONPATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(SOURCE, folder / f"{MODULE}.py")
    return folder


def import_plugin(folder: Path) -> ModuleType:
    """Write the plugin to ``folder`` and import it from there (registering ``shift`` and ``stripes``)."""
    write_plugin(folder)
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(MODULE)
    finally:
        sys.path.remove(str(folder))


def forget_plugin() -> None:
    """Unregister the plugin's components, so other tests see only the built-in ones."""
    from synthpos.registry import DATASETS, GENERATORS

    GENERATORS.unregister("shift")
    DATASETS.unregister("stripes")
    sys.modules.pop(MODULE, None)
