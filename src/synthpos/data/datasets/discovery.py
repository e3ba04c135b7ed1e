"""Where a dataset's data is: ``data.root``, ``$SYNTHPOS_DATA`` (and its ``<name>`` sub-folder), the system copy.

The places depend only on facts a source declares on its class (``env_subfolder_only``,
``system_root``), so a plugin dataset is found like a built-in one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from synthpos.registry import DATASETS

if TYPE_CHECKING:
    from synthpos.data.datasets.base import DatasetSource

DATA_ENV = "SYNTHPOS_DATA"


def candidate_folders(source: type[DatasetSource], root: Path | None) -> tuple[list[Path], list[str]]:
    """Folders to try in order, and how to name each place in an error message."""
    paths: list[Path] = []
    described: list[str] = []
    if root is not None:
        # A folder the user names is the only place looked at: silently reading the
        # system copy instead would hide a typo.
        return [Path(root).expanduser()], [f"data.root={root}"]
    name = source.name
    described.append("data.root (unset)")
    env = os.environ.get(DATA_ENV)
    if env:
        base = Path(env).expanduser()
        if source.env_subfolder_only:
            # $SYNTHPOS_DATA itself holds other datasets; only its named sub-folder can be this one (an image folder).
            paths.append(base / name)
            described.append(f"${DATA_ENV}/{name}={base / name}")
        else:
            paths += [base, base / name]
            described.append(f"${DATA_ENV}={base} (and {base / name})")
    else:
        described.append(f"${DATA_ENV} (unset)")
    system = source.system_root
    if system is not None:
        paths.append(system)
        described.append(str(system))
    return paths, described


def find_data_root(name: str, root: Path | None) -> Path:
    """The folder that holds the registered dataset ``name`` (see :meth:`DatasetSource.find_root`).

    Raises:
        SynthposError: the dataset is not registered, or no place holds its data.
    """
    return DATASETS.get(name).find_root(root)
