"""BYOL (Grill et al., NeurIPS 2020): predict the momentum encoder's projection of the other view."""

from __future__ import annotations

import torch

from synthpos.losses import NegativeCosineSimilarity
from synthpos.methods.base import Outputs, register_method
from synthpos.methods.momentum import MomentumMethod
from synthpos.models.heads import mlp
from synthpos.modes.contrast import PAIRS, Objective, Term


@register_method("byol")
class BYOL(MomentumMethod):
    """BYOL: ``2 - 2 cos(p1, k2) + 2 - 2 cos(p2, k1)``, averaged over the batch; no negatives.

    ``p = predictor(projector(backbone(x)))`` is online; ``k`` comes from the momentum copy
    of backbone + projector (cosine schedule ``base -> final``, updated after each step)
    and carries no gradient. This is solo-learn's ``byol_loss_func`` summed over both
    directions. Quality weights make each term ``mean_i(w_i * (2 - 2 cos_i))``.

    Heads and defaults as solo-learn's CIFAR recipe (scripts/pretrain/cifar/byol.yaml):
    projector and predictor Linear(4096) - BatchNorm - ReLU - Linear(256), momentum
    0.99 -> 1.0.

    CLSP term: on ``p``. BYOL's loss is ``2 - 2 cos`` between a prediction and its target,
    so ``mean(2 - 2 cos(p1, p3))`` is the same quantity on the same vectors: the synthetic
    view is one more view whose prediction must agree with view 1's.
    """

    synthetic_key = "p"

    contrasts = frozenset({PAIRS})

    def build_heads(self) -> None:
        c = self.shared
        self.projector = mlp(self.backbone.feature_dim, c.projector_hidden_dim, c.projector_out_dim, batch_norm=True)
        self.predictor = mlp(c.projector_out_dim, c.predictor_hidden_dim, c.projector_out_dim, batch_norm=True)

    def setup_losses(self) -> None:
        self.criterion = NegativeCosineSimilarity(dim=1)

    def embed(self, x: torch.Tensor) -> Outputs:
        z = self.projector(self.backbone(x))
        return {"z": z, "p": self.predictor(z)}

    def regression(self, p: torch.Tensor, k: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """``mean_i(w_i * (2 - 2 cos(p_i, k_i)))`` (w = 1 without weights). Shape: (N, D), (N, D) -> ()."""
        # mean(w * (2 - 2 cos)) = 2 mean(w) + 2 * (-mean(w cos)), the second term being the criterion.
        scale = 1.0 if weights is None else weights.detach().mean()
        return 2 * scale + 2 * self.criterion(p, k, weights=weights)

    def objective(self, outputs, views, batch) -> Objective:
        k1, k2 = self.momentum_keys(views)
        p1, p2 = outputs[0]["p"], outputs[1]["p"]
        return Objective([Term(lambda w, e: self.regression(p1, k2, w), weighted=True),
                          Term(lambda w, e: self.regression(p2, k1, w), weighted=True)], "byol")
