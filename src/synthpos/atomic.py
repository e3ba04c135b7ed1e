"""Atomic file writes: a file appears under its real name complete, or not at all.

A write that runs out of space (ENOSPC, EDQUOT, or torch's writer failing on a nearly full
file system) becomes :class:`NoSpaceError`: one line saying what was written where, how much
it needed and how much is free. The file under its real name is left as it was, so the stage
resumes once space is freed.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from synthpos.errors import SynthposError

#: The errors of a full disk or an exhausted quota.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# torch.save's C++ writer reports a failed write without its errno; these are its words for it.
_TORCH_WRITE_FAILED = ("file write failed", "unexpected pos", "PytorchStreamWriter failed")
_NEARLY_FULL = 64 << 20  # below this many free bytes, a failed torch write is taken for a full disk


def human_bytes(n: int) -> str:
    """``1536 -> '1.5 KiB'``."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"


def free_bytes(path: Path) -> int | None:
    """Free bytes (for this user) on the file system holding ``path`` or its nearest existing parent."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


class NoSpaceError(SynthposError, OSError):
    """A write ran out of disk space or quota: the path, what it needed, what is free.

    Both a :class:`SynthposError` (the CLI prints one line and exits 2) and an ``OSError``
    (code that tolerates a failed write, such as an optional cache, still does).

    Attributes:
        path: the file being written. written: bytes of it written before the failure.
        needed: about how many bytes the whole output still needs (set by whoever knows; else None).
        what: what the file is, in words ("the synthetic store's shards"), or None.
    """

    def __init__(self, path: Path | None, written: int = 0, needed: int | None = None, what: str | None = None,
                 quota: bool = False) -> None:
        super().__init__(errno.EDQUOT if quota else errno.ENOSPC, "no space left on device")
        self.path = None if path is None else Path(path)
        self.written, self.needed, self.what, self.quota = written, needed, what, quota

    def __str__(self) -> str:
        where = ("an output" if self.path is None else f"{self.path}") + (f" ({self.what})" if self.what else "")
        if self.needed:
            needs = f"it needs about {human_bytes(self.needed)} more"
        elif self.written:
            needs = f"it needs more than the {human_bytes(self.written)} written before space ran out"
        else:
            needs = "it needs more than is free"
        free = free_bytes(Path.cwd() if self.path is None else self.path.parent)
        free_text = "" if free is None else f", {human_bytes(free)} free there"
        kind = "no space left on device (disk quota exceeded)" if self.quota else "no space left on device"
        return (f"{kind} writing {where}: {needs}{free_text}; free space there and run the same command again "
                "(finished work is kept and the stage resumes)")


def as_no_space(err: BaseException, path: Path | None = None, written: int = 0) -> NoSpaceError | None:
    """``err`` as a :class:`NoSpaceError` for a write of ``path`` (default: the file the error names),
    or None if it is not a full disk or quota."""
    if isinstance(err, NoSpaceError):
        return err
    if path is None and isinstance(err, OSError) and isinstance(err.filename, (str, os.PathLike)):
        path = Path(err.filename)
    if isinstance(err, OSError) and err.errno in NO_SPACE_ERRNOS:
        return NoSpaceError(path, written, quota=err.errno == errno.EDQUOT)
    if isinstance(err, RuntimeError) and path is not None and any(words in str(err) for words in _TORCH_WRITE_FAILED):
        free = free_bytes(Path(path).parent)
        if free is not None and free < _NEARLY_FULL:
            return NoSpaceError(path, written)
    return None


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

    Raises:
        NoSpaceError: the disk or quota ran out while writing (``path`` is left as it was).

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
    except (OSError, RuntimeError) as err:
        full = as_no_space(err, Path(path), _size(tmp))
        if full is None or full is err:
            raise
        raise full from err
    finally:
        tmp.unlink(missing_ok=True)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


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


def created_dirs(path: Path) -> list[Path]:
    """``path`` and its missing parents, deepest first: what writing a file inside it would create
    (and what to remove again to leave the tree as it was)."""
    out = []
    while not path.exists():
        out.append(path)
        path = path.parent
    return out
