"""`synthpos run`: the stages of :mod:`synthpos.stages` in order, redoing what is not current."""

from __future__ import annotations

import json

from rich.console import Console

from synthpos.config import RunConfig
from synthpos.distributed import rank
from synthpos.run_lock import run_lock
from synthpos.stages import BY_NAME, STAGES, needed, run_stage, stage_status

console = Console(stderr=True)


def stage_done(config: RunConfig, stage: str) -> str | None:
    """Why ``stage`` can be skipped (not part of this run, or done with these settings), or None if it must run."""
    status = stage_status(BY_NAME[stage], config)
    if status.state == "not needed":
        return status.why
    if status.state == "done":
        return f"done, made with these settings{f' ({status.why})' if status.why else ''}"
    return None


def run_pipeline(config: RunConfig, show_progress: bool = True) -> dict:
    """Run every stage that is not done with these settings; return the evaluation metrics.

    A stage whose record does not match is redone with every later one (its old output moved
    to ``<run_dir>/previous/``); see :func:`synthpos.stages.run_stage`.
    """
    # Every stage's limits first: a bad pretrain value is not found after the generator has trained.
    config.check_limits(tuple(s.name for s in STAGES if needed(s, config) is None))
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
