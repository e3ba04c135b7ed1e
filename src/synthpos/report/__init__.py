"""Reports: image grids and result tables."""
