"""Self-supervised losses: NT-Xent and CLSP's synthetic-positive term."""

from synthpos.losses.ntxent import NTXentLoss
from synthpos.losses.synthetic import CLSPSimCLRLoss, SyntheticPositiveLoss

__all__ = ["CLSPSimCLRLoss", "NTXentLoss", "SyntheticPositiveLoss"]
