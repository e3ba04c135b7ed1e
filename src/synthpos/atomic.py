"""Atomic file writes: a file appears under its real name complete, or not at all."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary_sibling(path: Path) -> Path:
    """``path`` + ``.tmp-HOST-PID``: unique per process, also across the nodes of a shared file system."""
    path = Path(path)
    return path.with_name(f"{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to the disk (so a rename after it never exposes an empty file after a power cut)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename into it); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; rename it onto ``path`` if the block succeeds.

    ``fsync``: flush the file before the rename and the directory after it (checkpoints,
    stage records: files that must survive a machine crash, not only a killed process).

    The temporary name carries the host name and process id, so concurrent writers (DDP
    ranks, generation processes, on one node or several) never write into each other's
    file; on an error the temporary file is removed and ``path`` is left as it was.
    """
    tmp = temporary_sibling(path)
    try:
        yield tmp
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, path)
        if fsync:
            fsync_dir(Path(path).parent)
    finally:
        tmp.unlink(missing_ok=True)


def publish_once(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` unless a file appears there first; return whether this call wrote it.

    For files that several processes may create at once (a store's manifest, a fit shared by
    torchrun ranks): the complete, fsynced file is hard-linked into place, which fails when the
    name exists, so the first writer's file stays and nobody reads a half-written one. On a
    file system without hard links the last writer wins (still atomically).
    """
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:
            os.replace(tmp, path)
        return True
    finally:
        tmp.unlink(missing_ok=True)
