"""SimCLR (Chen et al., 2020); CLSP-SimCLR is SimCLR with ``synthetic.mode=clsp``."""

from __future__ import annotations

import torch
from torch import nn

from synthpos.config import OptimizerConfig, PretrainConfig, SyntheticConfig
from synthpos.data.augment import BatchAugment
from synthpos.distributed import world_size
from synthpos.losses import MultiPositiveInfoNCELoss, NTXentLoss
from synthpos.methods.base import Outputs, SSLMethod
from synthpos.models.heads import mlp


class SimCLR(SSLMethod):
    """SimCLR: NT-Xent between the projections of two views; negatives are the other images' views.

    With ``synthetic.mode=clsp`` this is CLSP-SimCLR: ``NT-Xent(z1, z2) + lambda * mean(2 - 2 cos(z1, z3))``
    with z3 a synthetic view that is never a negative. With ``multipos`` every view of an
    image, real or synthetic, is a positive of every other (multi-positive NT-Xent).
    Projector: Linear(hidden) - ReLU - Linear(out) (CLSP's).
    """

    def __init__(
        self,
        backbone: nn.Module,
        augment: BatchAugment,
        optimizer: OptimizerConfig,
        projector_hidden_dim: int = 4096,
        projector_out_dim: int = 256,
        temperature: float = 0.2,
        channels_last: bool = True,
        synthetic: SyntheticConfig | None = None,
        scorer: nn.Module | None = None,
    ) -> None:
        super().__init__(backbone, augment, optimizer, channels_last, synthetic, scorer)
        self.projector = mlp(backbone.feature_dim, projector_hidden_dim, projector_out_dim)
        self.temperature = temperature
        self.setup_losses()

    @classmethod
    def from_config(cls, cfg: PretrainConfig, backbone: nn.Module, augment: BatchAugment, scorer=None) -> SimCLR:
        return cls(backbone, augment, cfg.optimizer, cfg.projector_hidden_dim, cfg.projector_out_dim, cfg.temperature,
                   cfg.channels_last, cfg.synthetic, scorer)

    def setup_losses(self) -> None:
        gather = world_size() > 1
        self.criterion = NTXentLoss(self.temperature, gather_distributed=gather)
        self.multipos_criterion = MultiPositiveInfoNCELoss(self.temperature, gather_distributed=gather)

    def setup(self, stage: str) -> None:
        self.setup_losses()  # the world size is known only now

    def embed(self, x: torch.Tensor) -> Outputs:
        return {"z": self.projector(self.backbone(x))}

    def pair_loss(self, outputs, views, batch, weights):
        loss = self.criterion(outputs[0]["z"], outputs[1]["z"], weights=weights)
        return loss, {"ntxent": loss}

    def multipos_loss(self, outputs: list[Outputs], batch: dict) -> torch.Tensor:
        z = torch.cat([o["z"] for o in outputs])
        return self.multipos_criterion(z, batch["indices"].repeat(len(outputs)))
