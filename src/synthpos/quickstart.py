"""Kept for imports written before the stage layer: the quick start is :mod:`synthpos.stages.quickstart`."""

from synthpos.stages.quickstart import quickstart_recipe, run_quickstart
from synthpos.stages.quickstart_summary import CONTROL_ROW, RECIPE_POINT

__all__ = ["CONTROL_ROW", "RECIPE_POINT", "quickstart_recipe", "run_quickstart"]
