"""Barlow Twins (Zbontar et al., 2021)."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from synthpos.distributed import world_size
from synthpos.losses import BarlowTwinsLoss
from synthpos.methods.base import Outputs, SSLMethod, register_method
from synthpos.models.heads import mlp
from synthpos.modes.contrast import Objective, Term


class BarlowTwinsSettings(BaseModel):
    """``pretrain.barlow_twins``: the loss's weights."""

    model_config = ConfigDict(extra="forbid")

    lambda_param: float = Field(0.0051, ge=0, description="Weight of the off-diagonal (redundancy) term.")
    scale: float = Field(0.1, gt=0, description="Loss scale (solo-learn's scale_loss; 0.1 for CIFAR).")


@register_method("barlow_twins")
class BarlowTwins(SSLMethod):
    """Cross-correlation of the two views' batch-normalised projections pushed towards the identity.

    Loss: ``scale * (sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2)`` over the global batch.
    Projector: 3 layers with BatchNorm (solo-learn's CIFAR recipe: 2048-2048-2048).
    """

    settings = BarlowTwinsSettings

    def build_heads(self) -> None:
        c = self.shared
        self.projector = mlp(self.backbone.feature_dim, c.projector_hidden_dim, c.projector_out_dim, num_layers=3,
                             batch_norm=True)

    def setup_losses(self) -> None:
        self.criterion = BarlowTwinsLoss(self.options.lambda_param, gather_distributed=world_size() > 1)

    def embed(self, x: torch.Tensor) -> Outputs:
        return {"z": self.projector(self.backbone(x))}

    def objective(self, outputs, views, batch) -> Objective:
        z1, z2 = outputs[0]["z"], outputs[1]["z"]
        return Objective([Term(lambda w, e: self.options.scale * self.criterion(z1, z2))], "barlow")
