"""SimCLR (Chen et al., 2020) and CLSP-SimCLR (Zeng et al., 2024)."""

from __future__ import annotations

import torch
from torch import nn

from synthpos.config import OptimizerConfig
from synthpos.data.augment import BatchAugment
from synthpos.distributed import world_size
from synthpos.losses import CLSPSimCLRLoss, NTXentLoss
from synthpos.methods.base import SSLMethod


def projection_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Module:
    """CLSP's projector: Linear(hidden) - ReLU - Linear(out)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


class SimCLR(SSLMethod):
    """SimCLR; with ``synthetic_weight`` set, CLSP-SimCLR.

    CLSP-SimCLR adds a third view made from one synthetic candidate of each anchor
    (same augmentation) and the loss ``NT-Xent(z1, z2) + lambda * mean(2 - 2 cos(z1, z3))``;
    z3 is never a negative.
    """

    def __init__(
        self,
        backbone: nn.Module,
        augment: BatchAugment,
        optimizer: OptimizerConfig,
        projector_hidden_dim: int = 4096,
        projector_out_dim: int = 256,
        temperature: float = 0.2,
        synthetic_weight: float | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__(backbone, augment, optimizer, channels_last)
        self.projector = projection_head(backbone.feature_dim, projector_hidden_dim, projector_out_dim)
        self.temperature = temperature
        self.synthetic_weight = synthetic_weight

    def setup(self, stage: str) -> None:
        gather = world_size() > 1
        if self.synthetic_weight is None:
            self.criterion = NTXentLoss(self.temperature, gather_distributed=gather)
        else:
            self.criterion = CLSPSimCLRLoss(self.temperature, self.synthetic_weight, gather_distributed=gather)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        views = self.views(batch["images"], 2)
        if self.synthetic_weight is not None:
            views += self.views(batch["synthetic"], 1)
        # One backbone pass over all views: larger batches run faster on every device.
        z = self.projector(self.backbone(torch.cat(views))).float().chunk(len(views))
        if self.synthetic_weight is None:
            loss = self.criterion(z[0], z[1])
            return loss, {"loss": loss}
        loss, ntxent, synthetic = self.criterion(z[0], z[1], z[2], return_parts=True)
        return loss, {"loss": loss, "ntxent": ntxent, "synthetic": synthetic}
