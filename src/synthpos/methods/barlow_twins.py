"""Barlow Twins (Zbontar et al., 2021)."""

from __future__ import annotations

import torch
from torch import nn

from synthpos.config import BarlowTwinsConfig, OptimizerConfig, PretrainConfig, SyntheticConfig
from synthpos.data.augment import BatchAugment
from synthpos.distributed import world_size
from synthpos.losses import BarlowTwinsLoss
from synthpos.methods.base import Outputs, SSLMethod
from synthpos.models.heads import mlp


class BarlowTwins(SSLMethod):
    """Cross-correlation of the two views' batch-normalised projections pushed towards the identity.

    Loss: ``scale * (sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2)`` over the global batch.
    Projector: 3 layers with BatchNorm (solo-learn's CIFAR recipe: 2048-2048-2048).
    """

    def __init__(
        self,
        backbone: nn.Module,
        augment: BatchAugment,
        optimizer: OptimizerConfig,
        projector_hidden_dim: int = 2048,
        projector_out_dim: int = 2048,
        loss: BarlowTwinsConfig | None = None,
        channels_last: bool = True,
        synthetic: SyntheticConfig | None = None,
        scorer: nn.Module | None = None,
    ) -> None:
        super().__init__(backbone, augment, optimizer, channels_last, synthetic, scorer)
        self.projector = mlp(backbone.feature_dim, projector_hidden_dim, projector_out_dim, num_layers=3, batch_norm=True)
        self.loss_config = loss or BarlowTwinsConfig()
        self.setup("fit")

    @classmethod
    def from_config(cls, cfg: PretrainConfig, backbone: nn.Module, augment: BatchAugment, scorer=None) -> BarlowTwins:
        return cls(backbone, augment, cfg.optimizer, cfg.projector_hidden_dim, cfg.projector_out_dim, cfg.barlow_twins,
                   cfg.channels_last, cfg.synthetic, scorer)

    def setup(self, stage: str) -> None:
        self.criterion = BarlowTwinsLoss(self.loss_config.lambda_param, gather_distributed=world_size() > 1)

    def embed(self, x: torch.Tensor) -> Outputs:
        return {"z": self.projector(self.backbone(x))}

    def pair_loss(self, outputs, views, batch, weights):
        loss = self.loss_config.scale * self.criterion(outputs[0]["z"], outputs[1]["z"])
        return loss, {"barlow": loss}
