"""Synthetic modes: each way synthetic data enter pretraining is one class in one module here.

A mode says whether it needs a store of generated candidates (so ``run`` trains and runs
a generator only for modes that do), what it adds to a batch (:meth:`SyntheticMode.fill`,
data side) and what it adds to the loss (:meth:`SyntheticMode.loss`, model side).
Every module of this package is imported when the mode registry is first read.
"""

from synthpos.modes.base import SyntheticMode, register_mode

__all__ = ["SyntheticMode", "register_mode"]
