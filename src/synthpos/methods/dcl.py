"""DCL and DCLW (Yeh et al., 2022): SimCLR with the positive pair removed from the denominator."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from synthpos.distributed import world_size
from synthpos.losses import DCLLoss, DCLWLoss
from synthpos.methods.base import register_method
from synthpos.methods.simclr import SimCLR
from synthpos.modes.contrast import NEGATIVES, PAIRS, MultiPositive, Objective


@register_method("dcl")
class DCL(SimCLR):
    """Decoupled contrastive learning: SimCLR's architecture with :class:`~synthpos.losses.DCLLoss`."""

    contrasts = frozenset({PAIRS, NEGATIVES})  # no multi-positive form of the decoupled loss

    def setup_losses(self) -> None:
        super().setup_losses()
        self.criterion = DCLLoss(self.shared.temperature, gather_distributed=world_size() > 1)

    def objective(self, outputs, views, batch) -> Objective:
        objective = super().objective(outputs, views, batch)  # SimCLR's, with the decoupled criterion
        objective.name = "dcl"
        return objective

    def positives(self) -> MultiPositive | None:
        return None  # no multi-positive form of the decoupled loss


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
        self.criterion = DCLWLoss(self.shared.temperature, self.options.sigma, gather_distributed=world_size() > 1)
