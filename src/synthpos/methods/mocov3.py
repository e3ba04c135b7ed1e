"""MoCo v3 (Chen, Xie & He, ICCV 2021): in-batch keys from a momentum encoder, no queue."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from synthpos.distributed import world_size
from synthpos.losses import MoCoLoss
from synthpos.methods.base import Outputs, register_method
from synthpos.methods.momentum import MomentumMethod
from synthpos.models.heads import mlp
from synthpos.modes.contrast import NEGATIVES, PAIRS, Objective, Term


class MoCoV3Settings(BaseModel):
    """``pretrain.mocov3``: the heads' shape (default: solo-learn's ResNet branch)."""

    model_config = ConfigDict(extra="forbid")

    projector_layers: int = Field(2, ge=2, description="Layers of the projector (the paper: 3).")
    predictor_last_batch_norm: bool = Field(False, description="BatchNorm after the predictor's last layer (the paper: on).")


@register_method("mocov3")
class MoCoV3(MomentumMethod):
    """MoCo v3: predictions of the online encoder against momentum keys of the other view.

    Loss (solo-learn's ``mocov3_loss_func``, summed over both directions)::

        2T * CE(q1 . gather(k2)^T / T, own index) + 2T * CE(q2 . gather(k1)^T / T, own index)

    with ``q = predictor(projector(backbone(x)))`` and ``k`` from the momentum copy of
    backbone + projector (cosine schedule ``base -> final``, updated after each step). The
    ``2T`` factor is MoCo v3's: it makes the gradient scale independent of the temperature.
    The keys of all ranks are the negatives. Quality weights multiply each query's
    cross-entropy.

    Heads follow solo-learn's and the official code's ResNet branch, which is what
    solo-learn's CIFAR recipe (scripts/pretrain/cifar/mocov3.yaml: hidden 4096, out 256,
    T 0.2, momentum 0.99 -> 1.0) trains: projector 2 layers with BatchNorm and a last
    BatchNorm without affine parameters, predictor 2 layers with BatchNorm and no last
    BatchNorm. ``pretrain.mocov3: {projector_layers: 3, predictor_last_batch_norm: true}``
    gives the paper's (and its ViT branch's) heads.

    CLSP term: on ``p``, the query. The query is the vector the contrastive loss pulls
    towards its positive, and thanks to the ``2T`` factor that pull is
    ``-2 (1 - softmax_pos)`` per unit of cosine, at most the ``-2`` of ``2 - 2 cos``: so
    ``mean(2 - 2 cos(p1, p3))`` acts in the same space and at the same scale as the loss,
    just as CLSP-MoCo puts it on MoCo v2's queries (``z`` would pull the projector
    output, which the loss never compares directly).
    """

    synthetic_key = "p"

    contrasts = frozenset({PAIRS, NEGATIVES})
    settings = MoCoV3Settings

    def build_heads(self) -> None:
        c, o = self.shared, self.options
        self.projector = mlp(self.backbone.feature_dim, c.projector_hidden_dim, c.projector_out_dim,
                             num_layers=o.projector_layers, batch_norm=True, last_batch_norm=True, last_affine=False)
        self.predictor = mlp(c.projector_out_dim, c.predictor_hidden_dim, c.projector_out_dim, batch_norm=True,
                             last_batch_norm=o.predictor_last_batch_norm, last_affine=False)

    def setup_losses(self) -> None:
        self.criterion = MoCoLoss(self.shared.temperature, gather_distributed=world_size() > 1)

    def embed(self, x: torch.Tensor) -> Outputs:
        z = self.projector(self.backbone(x))
        return {"z": z, "p": self.predictor(z)}

    def objective(self, outputs, views, batch) -> Objective:
        k1, k2 = self.momentum_keys(views)
        q1, q2 = outputs[0]["p"], outputs[1]["p"]
        scale = 2 * self.shared.temperature
        # Each query meets the momentum keys of the other view of the other images, of all ranks.
        return Objective([
            Term(lambda w, e: self.criterion(q1, k2, weights=w, extra_negatives=e), weighted=True, queries=q1, in_batch=[k2]),
            Term(lambda w, e: self.criterion(q2, k1, weights=w, extra_negatives=e), weighted=True, queries=q2, in_batch=[k1]),
        ], "mocov3", combine=lambda v: scale * (v[0] + v[1]))
