"""SimSiam (Chen & He, CVPR 2021): predict the other view's projection behind a stop-gradient."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from synthpos.losses import NegativeCosineSimilarity
from synthpos.methods.base import Outputs, SSLMethod, register_method
from synthpos.models.heads import mlp
from synthpos.modes.contrast import PAIRS, Objective, Term


class SimSiamSettings(BaseModel):
    """``pretrain.simsiam``."""

    model_config = ConfigDict(extra="forbid")

    fixed_predictor_lr: bool = Field(False, description="Keep the predictor's lr at optimizer.lr through warm-up and "
                                     "cosine (the paper; solo-learn's static_lr, mmpretrain's SimSiamHook fix_pred_lr).")


@register_method("simsiam")
class SimSiam(SSLMethod):
    """SimSiam: ``-cos(p1, sg(z2)) / 2 - cos(p2, sg(z1)) / 2``, averaged over the batch.

    No momentum encoder and no negatives: the stop-gradient on the projection ``z`` and
    the predictor keep it from collapsing. Quality weights make each term
    ``-mean_i(w_i cos_i) / 2``.

    Heads and defaults as solo-learn's CIFAR recipe (scripts/pretrain/cifar/simsiam.yaml):
    projector 3 layers of 2048 with BatchNorm, the last BatchNorm without affine
    parameters; predictor Linear(512) - BatchNorm - ReLU - Linear(2048). solo-learn also
    keeps the predictor's learning rate fixed (``static_lr``, as the paper): here that is
    ``pretrain.simsiam.fixed_predictor_lr`` (default off: it follows the shared schedule).

    CLSP term: on ``p``, the output the loss compares with its target, so the synthetic
    view's prediction is pulled towards view 1's in the space the loss aligns.
    """

    synthetic_key = "p"

    contrasts = frozenset({PAIRS})
    settings = SimSiamSettings

    def build_heads(self) -> None:
        c = self.shared
        self.projector = mlp(self.backbone.feature_dim, c.projector_hidden_dim, c.projector_out_dim, num_layers=3,
                             batch_norm=True, last_batch_norm=True, last_affine=False)
        self.predictor = mlp(c.projector_out_dim, c.predictor_hidden_dim, c.projector_out_dim, batch_norm=True)

    def setup_losses(self) -> None:
        self.criterion = NegativeCosineSimilarity(dim=1)

    def static_lr_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.predictor.parameters()) if self.options.fixed_predictor_lr else []

    def embed(self, x: torch.Tensor) -> Outputs:
        z = self.projector(self.backbone(x))
        return {"z": z, "p": self.predictor(z)}

    def objective(self, outputs, views, batch) -> Objective:
        (z1, p1), (z2, p2) = ((o["z"], o["p"]) for o in outputs)
        return Objective([Term(lambda w, e: self.criterion(p1, z2.detach(), weights=w), weighted=True),
                          Term(lambda w, e: self.criterion(p2, z1.detach(), weights=w), weighted=True)],
                         "simsiam", combine=lambda v: (v[0] + v[1]) / 2)
