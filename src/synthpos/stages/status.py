"""Where a stage stands for a config, and getting its output ready to run.

:func:`stage_status` compares an output's record with the one the config would write;
:func:`prepare_stage` moves an output made with other settings to
``<run_dir>/previous/<stage>/`` (the last one kept, never deleted) and writes the starting
record; :func:`check_inputs` checks what a stage reads before anything is touched.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthpos.config import RunConfig
from synthpos.errors import SynthposError
from synthpos.stages.records import adopt as adopted_how, differences, expected_record, read_record, write_record
from synthpos.stages.table import PREVIOUS, Stage, console, needed


@dataclass
class Status:
    """Where a stage stands for a config."""

    state: str  # "not needed" | "done" | "resume" | "new" | "redo"
    why: str = ""
    changes: list[str] = field(default_factory=list)
    expected: dict[str, Any] | None = None


def _exists(path: Path) -> bool:
    """Something is there (an empty directory is nothing)."""
    if path.is_dir():
        return any(path.iterdir())
    return path.exists()


def stage_status(stage: Stage, config: RunConfig, adopt: bool = False, explicit: bool = False) -> Status:
    """Whether ``stage``'s output is current for ``config``; with ``adopt`` a record-less output that
    is shown to match gets its record written. ``explicit``: the stage's own command, which runs
    it even where ``synthpos run`` would not (:func:`needed`)."""
    if not explicit and (why := needed(stage, config)) is not None:
        return Status("not needed", why)
    output = stage.output(config)
    record = read_record(stage, config)
    try:
        expected = expected_record(stage, config)
    except SynthposError as err:
        # e.g. the generator this stage reads is not trained yet: nothing on disk can match.
        return Status("redo" if _exists(output) else "new", f"its inputs are not ready ({err})")
    if record is None:
        if not _exists(output):
            return Status("new", "", expected=expected)
        # A finished output is adopted as done, an unfinished one (a checkpoint left by an earlier
        # version mid-training) as something to resume: moving it aside would throw hours away.
        how = adopted_how(stage, config, expected)
        if how is None:
            return Status("redo", "no record of the settings that made it", ["(no record)"], expected)
        if adopt:
            write_record(stage, config, expected, complete=stage.finished(config))
        if stage.finished(config):
            return Status("done", f"adopted: {how}", expected=expected)
        return Status("resume", f"adopted: {how}", expected=expected)
    changes = differences(record, expected)
    if changes:
        return Status("redo", "made with other settings", changes, expected)
    if record.get("complete") and stage.finished(config):
        return Status("done", "", expected=expected)
    if record.get("complete"):
        # Finished once, damaged since (a store's shard zeroed or deleted): the stage remakes what is bad.
        return Status("resume", "its output was finished but is now incomplete or damaged", expected=expected)
    return Status("resume", "", expected=expected)


def is_lead_process() -> bool:
    """Rank 0 of a launched job (torchrun, Lightning's DDP children, SLURM), or a single process."""
    return all(os.environ.get(var, "0") == "0" for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def move_aside(stage: Stage, config: RunConfig) -> Path:
    """Move ``stage``'s output to ``<run_dir>/previous/<stage>/<name>`` (replacing the one kept there)."""
    output = stage.output(config)
    target = config.run_dir / PREVIOUS / stage.name / output.name
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(output), str(target))
    return target


def prepare_stage(stage: Stage, config: RunConfig, force: bool = False, explicit: bool = False) -> Status:
    """Decide whether ``stage`` runs; move a stale output aside and write the starting record.

    ``force``: run even if done (an earlier stage was redone), moving the old output aside.
    Only the lead process decides and writes; the others follow what it wrote.
    """
    status = stage_status(stage, config, adopt=is_lead_process(), explicit=explicit)
    if status.state == "not needed":
        console.print(f"[dim]skip {stage.name}: {status.why}[/dim]")
        return status
    if is_lead_process():
        for line in stage.notes(config):
            console.print(f"note: {line}", markup=False, highlight=False)
    if status.state == "done" and not force:
        note = f" ({status.why})" if status.why else ""
        console.print(f"[dim]skip {stage.name}: done, made with these settings{note}[/dim]")
        return status
    lead = is_lead_process()
    # Computed before anything moves: an input that is not there (an untrained generator) is
    # the stage's own one-line error, with nothing written.
    start = expected_record(stage, config)
    if status.state == "redo" or (force and status.state == "done"):
        why = ", ".join(status.changes) if status.changes else "an earlier stage was redone"
        if lead:
            where = move_aside(stage, config)
            console.print(f"[bold]redo {stage.name}[/bold]: {why}; the previous output is kept in {where}")
        status = Status("new", why)
    elif status.state == "resume" and lead:
        console.print(f"[bold]{stage.name}[/bold] (resuming){' ' + status.why if status.why else ''}")
    elif status.state != "resume" and not explicit and lead:  # a stage's own command needs no header
        console.print(f"[bold]{stage.name}[/bold]")
    if lead:
        # The record of the inputs as they are now, written before any output: a killed
        # stage resumes only with the same settings.
        write_record(stage, config, start, complete=False)
    return status


def check_inputs(stage: Stage, config: RunConfig, explicit: bool = False, upfront: bool = False) -> None:
    """Every path and value ``stage`` reads, checked before the lock, any record or any file is touched.

    ``upfront``: ``synthpos run`` checking all of its stages before the first starts; an input
    an earlier stage of the run makes (the run's store, its backbone) is left for the check
    at that stage's turn, when it is there.

    Raises:
        SynthposError: one line naming the key, the value and the fix.
    """
    if not explicit and needed(stage, config) is not None:
        return  # not part of this run: its settings are not read
    stage.limits(config)
    stage.check(config, explicit, upfront)
