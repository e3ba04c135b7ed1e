"""Running one stage: the one way a stage runs, for its command, ``synthpos run`` and the quick start.

:func:`run_stage` checks the stage's inputs, takes the run directory's lock, and runs the
stage unless its output is current (:mod:`synthpos.stages.status`), writing its record when it
finishes; :func:`plan` says what ``synthpos run`` would do without doing it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from synthpos.atomic import NoSpaceError, created_dirs
from synthpos.config import RunConfig
from synthpos.errors import SynthposError
from synthpos.stages.records import expected_record, write_record
from synthpos.stages.status import Status, check_inputs, is_lead_process, prepare_stage, stage_status
from synthpos.stages.table import BY_NAME, RECORD, STAGES, Stage


def _undo_start(stage: Stage, config: RunConfig, created: list[Path]) -> None:
    """Remove the starting record (and the folders made for it) of a stage that refused its input."""
    output = stage.output(config)
    if output.is_dir() and [p.name for p in output.iterdir()] == [RECORD]:
        stage.record_path(config).unlink()
        for folder in [output, *created]:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def run_stage(name: str, config: RunConfig, show_progress: bool = True, force: bool = False,
              explicit: bool = False) -> tuple[Any, bool]:
    """Run stage ``name`` unless its output is current; returns (its result, whether it ran).

    ``force``: redo it even if done (an earlier stage ran). ``explicit``: the stage's own CLI
    command, which runs it also where ``synthpos run`` would not need it.

    The run directory's lock (:mod:`synthpos.run_lock`) is held from the first record read to
    the last one written; a second process on the same run directory is refused.

    The result is what the stage function returns (a path, a store, the metrics) or, for a
    stage that is done, the same read from its output; None for a stage not in this run.

    SIGTERM outside the stage's own handling (while records are written, a backbone saved after
    training) is noted and raised as :class:`~synthpos.signals.Terminated` at the next safe point:
    before the stage's work starts, or once its record is written.
    """
    from synthpos.run_lock import run_lock
    from synthpos.signals import sigterm_raises, stop_requests

    stage = BY_NAME[name]
    check_inputs(stage, config, explicit)
    with run_lock(config.run_dir), stop_requests() as stop, \
            (sigterm_raises() if stage.stops_anywhere else nullcontext()):
        result = _run_stage_locked(stage, config, show_progress, force, explicit, stop)
        stop.raise_if_requested(f"stage {name} finished first")
        return result


def _run_stage_locked(stage: Stage, config: RunConfig, show_progress: bool, force: bool,
                      explicit: bool, stop) -> tuple[Any, bool]:
    name = stage.name
    created = created_dirs(stage.output(config))
    # Under torchrun every rank runs a stage that declares it (generate): rank 0 decides (moves a stale
    # output aside, writes the record) while the others wait, then they read what it wrote.
    from synthpos.distributed import launched_world_size, wait_for_launched_processes

    launched, lead = stage.every_rank and launched_world_size() > 1, is_lead_process()
    if launched and not lead:
        wait_for_launched_processes(f"stage {name}")
    status = prepare_stage(stage, config, force, explicit)
    if launched and lead:
        wait_for_launched_processes(f"stage {name}")
    if status.state == "not needed":
        return None, False
    if status.state == "done" and not force:
        return stage.result(config), False
    stop.raise_if_requested(f"before stage {name} started")
    try:
        result = stage.run(config, show_progress)
    except NoSpaceError as err:
        # The writer knows the file; the stage knows how much more its output needs.
        if err.needed is None:
            err.needed, what = stage.space(config)
            err.what = err.what or what
        if is_lead_process():
            _undo_start(stage, config, created)
        raise
    except SynthposError:
        if is_lead_process():
            _undo_start(stage, config, created)
        raise
    if is_lead_process():
        write_record(stage, config, expected_record(stage, config), complete=True)
    return result, True


def plan(config: RunConfig) -> list[tuple[str, Status]]:
    """What ``synthpos run`` would do, stage by stage, without running or writing anything."""
    out, redo = [], False
    for stage in STAGES:
        status = stage_status(stage, config)
        if redo and status.state == "done":
            status = Status("redo", "an earlier stage was redone")
        redo = redo or status.state in ("new", "redo", "resume")
        out.append((stage.name, status))
    return out



@contextmanager
def writing_into(target: Path, run_dir: Path, make: bool = True) -> Iterator[None]:
    """For a command outside the stage table that writes ``target`` (report, import-store): the run directory's
    lock when ``target`` is inside it (a second launch is refused), and SIGTERM stops it where it is (it writes
    atomic files only). ``make``: lock also where the run directory does not exist yet (the lock makes it, and
    removes it again)."""
    from synthpos.run_lock import run_lock
    from synthpos.signals import sigterm_raises

    inside = Path(os.path.abspath(target)).is_relative_to(Path(os.path.abspath(run_dir)))
    with run_lock(run_dir) if inside and (make or Path(run_dir).is_dir()) else nullcontext(), sigterm_raises():
        yield
