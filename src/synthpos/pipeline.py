"""Kept for imports written before the stage layer: ``synthpos run`` is :mod:`synthpos.stages.run`."""

from synthpos.stages.run import check_run, run_pipeline, stage_done

__all__ = ["check_run", "run_pipeline", "stage_done"]
