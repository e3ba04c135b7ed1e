"""VICReg (Bardes et al., 2022): variance, invariance and covariance terms."""

from __future__ import annotations

import torch
from torch import nn

from synthpos.config import OptimizerConfig, PretrainConfig, SyntheticConfig, VICRegConfig
from synthpos.data.augment import BatchAugment
from synthpos.distributed import world_size
from synthpos.losses import VICRegLoss
from synthpos.methods.base import Outputs, SSLMethod
from synthpos.models.heads import mlp


class VICReg(SSLMethod):
    """``sim * MSE(z1, z2) + var * hinge(std) + cov * off-diagonal covariance``, over the global batch.

    Projector: 3 layers with BatchNorm (solo-learn's CIFAR recipe: 2048-2048-2048).
    """

    def __init__(
        self,
        backbone: nn.Module,
        augment: BatchAugment,
        optimizer: OptimizerConfig,
        projector_hidden_dim: int = 2048,
        projector_out_dim: int = 2048,
        loss: VICRegConfig | None = None,
        channels_last: bool = True,
        synthetic: SyntheticConfig | None = None,
        scorer: nn.Module | None = None,
    ) -> None:
        super().__init__(backbone, augment, optimizer, channels_last, synthetic, scorer)
        self.projector = mlp(backbone.feature_dim, projector_hidden_dim, projector_out_dim, num_layers=3, batch_norm=True)
        self.loss_config = loss or VICRegConfig()
        self.setup("fit")

    @classmethod
    def from_config(cls, cfg: PretrainConfig, backbone: nn.Module, augment: BatchAugment, scorer=None) -> VICReg:
        return cls(backbone, augment, cfg.optimizer, cfg.projector_hidden_dim, cfg.projector_out_dim, cfg.vicreg,
                   cfg.channels_last, cfg.synthetic, scorer)

    def setup(self, stage: str) -> None:
        c = self.loss_config
        self.criterion = VICRegLoss(c.sim_weight, c.var_weight, c.cov_weight, gather_distributed=world_size() > 1)

    def embed(self, x: torch.Tensor) -> Outputs:
        return {"z": self.projector(self.backbone(x))}

    def pair_loss(self, outputs, views, batch, weights):
        loss = self.criterion(outputs[0]["z"], outputs[1]["z"])
        return loss, {"vicreg": loss}
