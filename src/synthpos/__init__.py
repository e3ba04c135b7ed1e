"""synthpos: self-supervised representation learning with synthetic positives."""

from synthpos.errors import SynthposError

__version__ = "0.1.0"

__all__ = ["SynthposError", "__version__"]
