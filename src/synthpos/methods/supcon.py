"""Supervised contrastive learning (Khosla et al., 2020): the labelled upper bound."""

from __future__ import annotations

import torch

from synthpos.distributed import world_size
from synthpos.losses import SupConLoss
from synthpos.methods.base import Outputs, register_method
from synthpos.methods.simclr import SimCLR


@register_method("supcon")
class SupCon(SimCLR):
    """SimCLR's architecture with SupCon's loss: every view of every image of the same class is a positive.

    With ``multipos`` the synthetic views join with their anchor's label. Needs labels.
    """

    needs_labels = True
    modes = ("multipos",)  # its loss is not a sum over positive pairs: nothing to weight

    def setup_losses(self) -> None:
        self.criterion = SupConLoss(self.shared.temperature, gather_distributed=world_size() > 1)

    def pair_loss(self, outputs, views, batch, weights):
        loss = self.multipos_loss(outputs, batch)
        return loss, {"supcon": loss}

    def multipos_loss(self, outputs: list[Outputs], batch) -> torch.Tensor:
        z = torch.cat([o["z"] for o in outputs])
        return self.criterion(z, batch.labels.repeat(len(outputs)))
