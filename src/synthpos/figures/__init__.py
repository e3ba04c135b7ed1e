"""Figures as PNG files (matplotlib, Agg): the grid of anchors beside their positives, the CKA heat
map, training and label-efficiency curves. Below both ``evaluation`` (``inspect-store`` and
``compare`` draw them) and ``report`` (which puts them in its page)."""
