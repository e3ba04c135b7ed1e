"""SimCLR (Chen et al., 2020); CLSP-SimCLR is SimCLR with ``synthetic.mode=clsp``."""

from __future__ import annotations

import torch

from synthpos.distributed import world_size
from synthpos.losses import MultiPositiveInfoNCELoss, NTXentLoss
from synthpos.methods.base import Outputs, SSLMethod, register_method
from synthpos.models.heads import mlp
from synthpos.modes.contrast import NEGATIVES, PAIRS, POSITIVES, MultiPositive, Objective, Term


@register_method("simclr", default=True)  # a recipe that names no method
class SimCLR(SSLMethod):
    """SimCLR: NT-Xent between the projections of two views; negatives are the other images' views.

    With ``synthetic.mode=clsp`` this is CLSP-SimCLR: ``NT-Xent(z1, z2) + lambda * mean(2 - 2 cos(z1, z3))``
    with z3 a synthetic view that is never a negative. With ``multipos`` every view of an
    image, real or synthetic, is a positive of every other (multi-positive NT-Xent). With
    ``mochi`` each anchor also meets MoCHi's mixes of its hardest in-batch negatives.
    Projector: Linear(hidden) - ReLU - Linear(out) (CLSP's).
    """

    contrasts = frozenset({PAIRS, NEGATIVES, POSITIVES})

    def build_heads(self) -> None:
        c = self.shared
        self.projector = mlp(self.backbone.feature_dim, c.projector_hidden_dim, c.projector_out_dim)

    def setup_losses(self) -> None:
        gather, t = world_size() > 1, self.shared.temperature
        self.criterion = NTXentLoss(t, gather_distributed=gather)
        self.multipos_criterion = MultiPositiveInfoNCELoss(t, gather_distributed=gather)

    def embed(self, x: torch.Tensor) -> Outputs:
        return {"z": self.projector(self.backbone(x))}

    def objective(self, outputs, views, batch) -> Objective:
        z1, z2 = outputs[0]["z"], outputs[1]["z"]
        # The anchors are both views; each one's negatives both views of every other image, as in the loss.
        term = Term(lambda w, extra: self.criterion(z1, z2, weights=w, extra_negatives=extra), weighted=True,
                    queries=torch.cat([z1, z2]), in_batch=[z1, z2])
        return Objective([term], "ntxent")

    def positives(self) -> MultiPositive | None:
        return MultiPositive("z", self.multipos_criterion)
