"""``synthpos run``: the rows of the stage table in order, redoing what is not current.

A stage whose record does not match is redone with every later one (its old output moved to
``<run_dir>/previous/``); see :func:`synthpos.stages.runner.run_stage`. With ``seeds`` the
run is made once per seed (:mod:`synthpos.stages.seeds`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from synthpos.config import RunConfig
from synthpos.run_lock import run_lock
from synthpos.stages.runner import run_stage
from synthpos.stages.seeds import print_seeds, run_seeds, train_shared_generator
from synthpos.stages.status import check_inputs, stage_status
from synthpos.stages.table import BY_NAME, STAGES


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
    """Run every stage that is not done with these settings; return the evaluation metrics."""
    from synthpos.distributed import rank  # torch: not imported by `import synthpos.stages`

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


def command(config: RunConfig, show_progress: bool = True) -> None:
    """``synthpos run`` (and ``run --seeds``): the results on stdout, where they went on stderr."""
    check_run(config)  # before the lock and before anything is read or moved
    with run_lock(config.run_dir):  # one writer for the whole run, seeds and shared generator included
        if config.seeds:
            result = run_seeds(config, lambda c: run_pipeline(c, show_progress=show_progress),
                               lambda c: train_shared_generator(c, show_progress))
            print_seeds(result)
            if config.published is not None:
                _print_published(config, intervals=result["summary"])
            _say(f"run directory: {config.run_dir} (seeds.json, seed-*/)")
            _say(f"report: {_write_report(config.run_dir)}")
            return
        metrics = run_pipeline(config, show_progress=show_progress)
        if metrics:  # empty on DDP ranks other than 0
            print(json.dumps(metrics["results"], indent=2))
            if config.published is not None:
                _print_published(config, metrics["results"])
        _say(f"run directory: {config.run_dir}")
        if metrics:
            _say(f"report: {_write_report(config.run_dir)}")


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _print_published(config: RunConfig, results: dict | None = None, intervals: dict | None = None) -> None:
    from synthpos.evaluation.published import compare_published

    for line in compare_published(config.published, results, intervals):
        print(line)


def _write_report(run_dir: Path) -> Path:
    from synthpos.report.html import write_report

    return write_report([run_dir])
