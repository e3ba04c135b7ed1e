"""Supervised contrastive learning (Khosla et al., 2020): the labelled upper bound."""

from __future__ import annotations

from synthpos.distributed import world_size
from synthpos.losses import SupConLoss
from synthpos.methods.base import register_method
from synthpos.methods.simclr import SimCLR
from synthpos.modes.contrast import POSITIVES, MultiPositive, Objective, Term


@register_method("supcon")
class SupCon(SimCLR):
    """SimCLR's architecture with SupCon's loss: every view of every image of the same class is a positive.

    With ``multipos`` the synthetic views join with their anchor's label. Needs labels.
    """

    needs_labels = True
    contrasts = frozenset({POSITIVES})  # its loss is not a sum over positive pairs: nothing to weight

    def setup_losses(self) -> None:
        self.criterion = SupConLoss(self.shared.temperature, gather_distributed=world_size() > 1)

    def objective(self, outputs, views, batch) -> Objective:
        form = self.positives()
        return Objective([Term(lambda w, e: form.loss([o["z"] for o in outputs], batch.indices, batch.labels))], "supcon")

    def positives(self) -> MultiPositive | None:
        return MultiPositive("z", self.criterion, by_label=True)
