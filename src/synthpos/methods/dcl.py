"""DCL and DCLW (Yeh et al., 2022): SimCLR with the positive pair removed from the denominator."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from synthpos.distributed import world_size
from synthpos.losses import DCLLoss, DCLWLoss
from synthpos.methods.base import register_method
from synthpos.methods.simclr import SimCLR


@register_method("dcl")
class DCL(SimCLR):
    """Decoupled contrastive learning: SimCLR's architecture with :class:`~synthpos.losses.DCLLoss`."""

    modes = ("quality", "mochi")  # no multi-positive form of the decoupled loss

    def setup_losses(self) -> None:
        super().setup_losses()
        self.criterion = DCLLoss(self.config.temperature, gather_distributed=world_size() > 1)

    def pair_loss(self, outputs, views, batch, weights):
        loss, _ = super().pair_loss(outputs, views, batch, weights)  # SimCLR's, with the decoupled criterion
        return loss, {"dcl": loss}


class DCLWSettings(BaseModel):
    """``pretrain.dclw`` (was ``pretrain.dclw_sigma``)."""

    model_config = ConfigDict(extra="forbid")

    sigma: float = Field(0.5, gt=0, description="Width of the von Mises-Fisher weighting of positives.")


@register_method("dclw")
class DCLW(DCL):
    """DCL with positives weighted by a von Mises-Fisher kernel of width ``sigma`` (:class:`~synthpos.losses.DCLWLoss`)."""

    settings = DCLWSettings
    moved = {"dclw_sigma": "sigma"}  # pretrain.dclw_sigma -> pretrain.dclw.sigma (issue 11)

    def setup_losses(self) -> None:
        SimCLR.setup_losses(self)
        self.criterion = DCLWLoss(self.config.temperature, self.options.sigma, gather_distributed=world_size() > 1)
