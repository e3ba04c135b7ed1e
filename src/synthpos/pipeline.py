"""`synthpos run`: the stages of :mod:`synthpos.stages` in order, redoing what is not current."""

from __future__ import annotations

import json

from rich.console import Console

from synthpos.config import RunConfig
from synthpos.distributed import rank
from synthpos.run_lock import run_lock
from synthpos.stages import BY_NAME, STAGES, check_inputs, run_stage, stage_status

console = Console(stderr=True)


def stage_done(config: RunConfig, stage: str) -> str | None:
    """Why ``stage`` can be skipped (not part of this run, or done with these settings), or None if it must run."""
    status = stage_status(BY_NAME[stage], config)
    if status.state == "not needed":
        return status.why
    if status.state == "done":
        return f"done, made with these settings{f' ({status.why})' if status.why else ''}"
    return None


def check_run(config: RunConfig) -> None:
    """Every stage's values and the paths it reads from outside the run, before any stage starts.

    A bad pretrain value is not found after the generator has trained, and a bad
    ``evaluate.checkpoint`` before any output is looked at or moved.

    Raises:
        SynthposError: one line naming the key and the fix.
    """
    for stage in STAGES:
        check_inputs(stage, config, upfront=True)


def run_pipeline(config: RunConfig, show_progress: bool = True) -> dict:
    """Run every stage that is not done with these settings; return the evaluation metrics.

    A stage whose record does not match is redone with every later one (its old output moved
    to ``<run_dir>/previous/``); see :func:`synthpos.stages.run_stage`.
    """
    check_run(config)
    with run_lock(config.run_dir):  # held between the stages too: nobody else writes in between
        upstream_ran = False
        for stage in STAGES:
            # Once a stage has run, every later one runs too: its inputs are new.
            _, ran = run_stage(stage.name, config, show_progress, force=upstream_ran)
            upstream_ran = upstream_ran or ran
            if ran and rank() != 0:
                # Lightning's DDP relaunches this command on every rank; only rank 0 goes on.
                return {}
        return json.loads((config.evaluate_dir / "metrics.json").read_text())
