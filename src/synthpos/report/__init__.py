"""The HTML report of a run (`synthpos report`): what a run directory holds, as one page."""
