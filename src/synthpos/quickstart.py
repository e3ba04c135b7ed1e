"""Kept for imports written before the stage layer: the quick start is :mod:`synthpos.stages.quickstart`."""

from synthpos.stages.quickstart import quickstart_recipe, run_quickstart
from synthpos.stages.quickstart_summary import LEGACY_FOLDERS, RECIPE_POINT, control_row, synthetic_row

#: The control's row in quick starts run before the synthetic mode was the recipe's (CLSP-SimCLR's control);
#: now :func:`control_row` of the recipe's mode.
CONTROL_ROW = next(name for name, folder in LEGACY_FOLDERS.items() if folder == "clsp_simclr_control")

__all__ = ["CONTROL_ROW", "RECIPE_POINT", "control_row", "quickstart_recipe", "run_quickstart", "synthetic_row"]
