"""One run directory, one writer: ``<run_dir>/.synthpos.lock``.

Every stage command (and ``synthpos run``, the quick start, ``run --seeds`` around all of
their stages) holds the lock of its run directory while it runs. The file says who holds it
(pid, host, start time, the launch it belongs to) and is removed on every exit: success,
exit 2, Ctrl-C, SIGTERM. Only SIGKILL or a power cut leave it behind; the next command on
the same host sees that its process is gone and takes it over with a one-line notice.

- **Re-entrant in one process**: ``run`` takes it, then each stage takes it again (a depth count).
- **Shared by one distributed launch**: the lead process (rank 0 of torchrun, SLURM or
  Lightning's DDP) takes it, keyed by the launch: torchrun's ``TORCHELASTIC_RUN_ID`` (the same
  in every rank of one ``torchrun`` call, new in the next), else SLURM's job and step ids. The
  other ranks never create or remove it; they refuse only a lock of another launch (or, for
  Lightning's DDP children, which share no launch id, of a process that is not their ancestor).
- **A second launch** exits 2 with one line naming the holder and how to proceed; a lock from
  another host is refused with the command that clears it, since this host cannot tell
  whether that process still runs.

Taking the lock is atomic (a complete file hard-linked into place, :func:`~synthpos.atomic.publish_once`).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from synthpos.atomic import created_dirs, publish_once
from synthpos.errors import SynthposError

LOCK = ".synthpos.lock"
_held: dict[Path, int] = {}  # run directories this process holds (or shares), with their depth


def lock_path(run_dir: Path) -> Path:
    return Path(run_dir) / LOCK


def launch_id() -> str | None:
    """The distributed launch this process belongs to (the same in each of its ranks), or None."""
    if run_id := os.environ.get("TORCHELASTIC_RUN_ID"):
        return f"torchrun:{run_id}"
    if job := os.environ.get("SLURM_JOB_ID"):
        return f"slurm:{job}.{os.environ.get('SLURM_STEP_ID', '')}"
    return None


def _is_lead() -> bool:
    """Rank 0 of a launched job (torchrun, Lightning's DDP children, SLURM), or a single process."""
    return all(os.environ.get(var, "0") == "0" for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ..., starttime at index 19), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot): tells a live holder from a new process with its pid."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the holder's process (on this host) still runs."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    started, now = holder.get("started"), _start_ticks(pid)
    return not (isinstance(started, int) and now is not None and now != started)  # a reused pid is not the holder


def _dead_here(holder: dict[str, Any]) -> bool:
    """The holder ran on this host and is gone (a SIGKILLed run): its lock may be taken over."""
    return bool(holder) and holder.get("host") == socket.gethostname() and not _alive(holder)


def _ancestors() -> set[int]:
    """The pids above this process (Lightning's DDP children run under the process that holds the lock)."""
    out, pid = set(), os.getppid()
    for _ in range(64):
        if pid <= 1 or pid in out:
            break
        out.add(pid)
        fields = _proc_stat(pid)
        if not fields:
            break
        pid = int(fields[1])
    return out


def _read(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError):
        return {}  # unreadable: a holder we cannot name
    return holder if isinstance(holder, dict) else {}


def _ours(holder: dict[str, Any]) -> bool:
    """The lock is this process's, its launch's, or its parent's (a DDP child of the holder)."""
    host = socket.gethostname()
    if holder.get("host") == host and holder.get("pid") in ({os.getpid()} | _ancestors()):
        return True
    launch = launch_id()
    return launch is not None and holder.get("launch") == launch


def _who(holder: dict[str, Any]) -> str:
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}"


def _refuse(run_dir: Path, holder: dict[str, Any]) -> SynthposError:
    path = lock_path(run_dir)
    if not holder:
        return SynthposError(f"run directory {run_dir} is locked by {path}, which cannot be read; if no synthpos "
                             f"command runs on it, remove the lock with `rm {path}` and run the command again")
    if holder.get("host") != socket.gethostname():
        return SynthposError(f"run directory {run_dir} is in use by {_who(holder)} (another host, so this one cannot "
                             f"tell whether it still runs); if it does not, remove the lock with `rm {path}` and run the "
                             "command again, else wait for it or use another run_dir")
    return SynthposError(f"run directory {run_dir} is in use by {_who(holder)} ({path}); wait for it to finish, stop "
                         f"it (kill {holder.get('pid')}), or use another run_dir")



def live_holder(run_dir: Path | str) -> str | None:
    """Who holds ``run_dir``'s lock and may be writing in it: ``pid ... on ... since ... (<lock>)``; None when the lock is
    free, this process's (or its launch's), or left by a process that no longer runs on this host.

    For commands that only read a run (``synthpos inspect-store --verify``): they run beside its writer and say so.
    A holder on another host, or a lock that cannot be read, counts as live: this host cannot tell.
    """
    path = lock_path(Path(run_dir))
    holder = _read(path)
    if holder is None or (holder and (_ours(holder) or _dead_here(holder))):
        return None
    return f"{_who(holder)} ({path})" if holder else f"a process named by {path}, which cannot be read"


def _take(run_dir: Path) -> bool:
    """Take the lock (True), or find it already this launch's (False); refuse anyone else's."""
    path = lock_path(run_dir)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
          "started": _start_ticks(os.getpid()), "launch": launch_id()}
    for _ in range(2):  # the second time after taking over a dead holder's lock
        if publish_once(path, json.dumps(me, indent=2)):
            return True
        holder = _read(path)
        if holder is None:
            continue  # removed meanwhile: try again
        if _ours(holder):
            return False
        if _dead_here(holder):
            from rich.console import Console

            Console(stderr=True).print(f"note: taking over the lock of {run_dir} from {_who(holder)}, which no "
                                       "longer runs", markup=False, highlight=False)
            path.unlink(missing_ok=True)
            continue
        raise _refuse(run_dir, holder)
    raise _refuse(run_dir, _read(path) or {})


@contextmanager
def run_lock(run_dir: Path | str) -> Iterator[None]:
    """Hold ``<run_dir>/.synthpos.lock`` for the block (re-entrant; shared by one launch's ranks).

    Raises:
        SynthposError: another process (or launch) holds it: one line naming it and how to proceed.
    """
    run_dir = Path(run_dir)
    key = run_dir.resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    owned, created = False, []
    if _is_lead():
        created = created_dirs(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            owned = _take(run_dir)
        except BaseException:
            _remove_empty(created)
            raise
    elif (holder := _read(lock_path(run_dir))) is not None and not _ours(holder) and not _dead_here(holder):
        # Rank 0 of this launch may not have taken it yet (absent, or a dead holder's it is about
        # to take over, is fine); a live process of another launch is not.
        raise _refuse(run_dir, holder)
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        if owned:
            lock_path(run_dir).unlink(missing_ok=True)
            _remove_empty(created)


def _remove_empty(created: list[Path]) -> None:
    """Remove the folders made only to hold the lock (deepest first), so a refused command leaves nothing."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            break
