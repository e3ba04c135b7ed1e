"""Kept for imports written before the stage layer: the quick start is :mod:`synthpos.stages.quickstart`."""

from synthpos.stages.quickstart import quickstart_recipe, run_quickstart
from synthpos.stages.quickstart_summary import CONTROL_ROW, RECIPE_POINT, control_row, synthetic_row

__all__ = ["CONTROL_ROW", "RECIPE_POINT", "control_row", "quickstart_recipe", "run_quickstart", "synthetic_row"]
