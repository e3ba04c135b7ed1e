"""Joint-embedding methods as Lightning modules on a thin shared base."""

from synthpos.methods.base import SSLMethod
from synthpos.methods.simclr import SimCLR

__all__ = ["SSLMethod", "SimCLR"]
