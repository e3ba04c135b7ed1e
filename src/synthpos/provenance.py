"""What made an output: synthpos's version and git commit, torch and diffusers, and the config's hash.

Every JSON output (``backbone.json``, ``metrics.json``, a store's ``manifest.json``, a
generator's ``COMPLETE``) carries a ``provenance`` object::

    {"synthpos_version": "0.1.0", "git_commit": "193e6b0...", "git_dirty": false,
     "torch": "2.14.1", "diffusers": "0.42.1", "config_sha256": "5f1c..."}

The git fields are those of the checkout the ``synthpos`` package was imported from (git is
run in the package's folder, not in the current directory), and null when the package is not
a tracked part of a checkout (an installed wheel, a copied tree, no git). ``git_dirty``: the
checkout has changes, tracked or untracked (ignored files aside).

Provenance is recorded, never compared: it is no part of a stage's record, of the generator
record that decides whether a store is resumed, or of the store fields checked on reopening,
so a new commit never redoes or refuses a stage. A store keeps the provenance of the run that
created it (a resume by a later commit does not rewrite its manifest).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

import synthpos

#: The folder git is asked about: where the imported package lives (tests point it elsewhere).
PACKAGE_DIR = Path(synthpos.__file__).resolve().parent
_GIT_TIMEOUT_S = 10


def _git(folder: Path, *args: str) -> subprocess.CompletedProcess | None:
    # Variables a git hook or a caller's environment may set would point git at another repository.
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")}
    try:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, env=env,
                              timeout=_GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):  # no git, or a hung filesystem
        return None


def git_state(folder: Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout ``folder`` (default: the package's) is tracked in, else (None, None).

    The package's own ``__init__.py`` must be tracked there: an installed copy inside some other
    repository (a virtual environment in a project folder) is not that repository's code.
    """
    folder = PACKAGE_DIR if folder is None else Path(folder)
    tracked = _git(folder, "ls-files", "--error-unmatch", "__init__.py")
    if tracked is None or tracked.returncode != 0:
        return None, None
    head = _git(folder, "rev-parse", "HEAD")
    status = _git(folder, "status", "--porcelain")
    if head is None or head.returncode != 0 or status is None or status.returncode != 0:
        return None, None
    return head.stdout.strip(), bool(status.stdout.strip())


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def config_sha256(config: BaseModel | Mapping[str, Any] | None) -> str | None:
    """SHA-256 of the resolved config as canonical JSON (sorted keys), ``run_dir`` left out.

    ``run_dir`` says where outputs go, not what they are: the same recipe run in another folder
    has the same hash (and a resumed store's manifest the same bytes as an uninterrupted one's).
    """
    if config is None:
        return None
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)
    data.pop("run_dir", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def provenance(config: BaseModel | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``provenance`` object of an output made with ``config`` (the run's, or the stage section's)."""
    commit, dirty = git_state()
    return {
        "synthpos_version": synthpos.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "torch": _version("torch"),
        "diffusers": _version("diffusers"),
        "config_sha256": config_sha256(config),
    }
