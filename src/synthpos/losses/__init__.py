"""Self-supervised losses: one per joint-embedding method, CLSP's synthetic-positive
term and GenView's quality weights."""

from synthpos.losses.barlow_twins import BarlowTwinsLoss
from synthpos.losses.dcl import DCLLoss, DCLWLoss
from synthpos.losses.infonce import MultiPositiveInfoNCELoss, SupConLoss
from synthpos.losses.moco import MoCoLoss
from synthpos.losses.negative_cosine import NegativeCosineSimilarity
from synthpos.losses.ntxent import NTXentLoss
from synthpos.losses.quality import quality_weights
from synthpos.losses.synthetic import CLSPSimCLRLoss, SyntheticPositiveLoss
from synthpos.losses.vicreg import VICRegLoss

__all__ = [
    "BarlowTwinsLoss",
    "CLSPSimCLRLoss",
    "DCLLoss",
    "DCLWLoss",
    "MoCoLoss",
    "MultiPositiveInfoNCELoss",
    "NTXentLoss",
    "NegativeCosineSimilarity",
    "SupConLoss",
    "SyntheticPositiveLoss",
    "VICRegLoss",
    "quality_weights",
]
