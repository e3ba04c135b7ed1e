"""VICReg (Bardes et al., 2022): variance, invariance and covariance terms."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from synthpos.distributed import world_size
from synthpos.losses import VICRegLoss
from synthpos.methods.base import Outputs, SSLMethod, register_method
from synthpos.models.heads import mlp
from synthpos.modes.contrast import Objective, Term


class VICRegSettings(BaseModel):
    """``pretrain.vicreg``: the weights of the three terms."""

    model_config = ConfigDict(extra="forbid")

    sim_weight: float = Field(25.0, ge=0)
    var_weight: float = Field(25.0, ge=0)
    cov_weight: float = Field(1.0, ge=0)


@register_method("vicreg")
class VICReg(SSLMethod):
    """``sim * MSE(z1, z2) + var * hinge(std) + cov * off-diagonal covariance``, over the global batch.

    Projector: 3 layers with BatchNorm (solo-learn's CIFAR recipe: 2048-2048-2048).
    """

    settings = VICRegSettings

    def build_heads(self) -> None:
        c = self.shared
        self.projector = mlp(self.backbone.feature_dim, c.projector_hidden_dim, c.projector_out_dim, num_layers=3,
                             batch_norm=True)

    def setup_losses(self) -> None:
        o = self.options
        self.criterion = VICRegLoss(o.sim_weight, o.var_weight, o.cov_weight, gather_distributed=world_size() > 1)

    def embed(self, x: torch.Tensor) -> Outputs:
        return {"z": self.projector(self.backbone(x))}

    def objective(self, outputs, views, batch) -> Objective:
        z1, z2 = outputs[0]["z"], outputs[1]["z"]
        return Objective([Term(lambda w, e: self.criterion(z1, z2))], "vicreg")
