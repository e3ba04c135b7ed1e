"""MoCo v3 (Chen, Xie & He, ICCV 2021): in-batch keys from a momentum encoder, no queue."""

from __future__ import annotations

import torch
from torch import nn

from synthpos.config import OptimizerConfig, PretrainConfig, SyntheticConfig
from synthpos.data.augment import BatchAugment
from synthpos.distributed import world_size
from synthpos.losses import MoCoLoss
from synthpos.methods.base import Outputs, SSLMethod
from synthpos.methods.momentum import MomentumEncoder, cosine_momentum
from synthpos.models.heads import mlp


class MoCoV3(SSLMethod):
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
    BatchNorm. ``projector_layers=3, predictor_last_batch_norm=True`` gives the paper's
    (and its ViT branch's) heads.

    CLSP term: on ``p``, the query. The query is the vector the contrastive loss pulls
    towards its positive, and thanks to the ``2T`` factor that pull is
    ``-2 (1 - softmax_pos)`` per unit of cosine, at most the ``-2`` of ``2 - 2 cos``: so
    ``mean(2 - 2 cos(p1, p3))`` acts in the same space and at the same scale as the loss,
    just as CLSP-MoCo puts it on MoCo v2's queries (``z`` would pull the projector
    output, which the loss never compares directly).
    """

    synthetic_key = "p"

    def __init__(
        self,
        backbone: nn.Module,
        augment: BatchAugment,
        optimizer: OptimizerConfig,
        projector_hidden_dim: int = 4096,
        projector_out_dim: int = 256,
        predictor_hidden_dim: int = 4096,
        temperature: float = 0.2,
        momentum_base: float = 0.99,
        momentum_final: float = 1.0,
        channels_last: bool = True,
        synthetic: SyntheticConfig | None = None,
        scorer: nn.Module | None = None,
        projector_layers: int = 2,
        predictor_last_batch_norm: bool = False,
    ) -> None:
        super().__init__(backbone, augment, optimizer, channels_last, synthetic, scorer)
        self.projector = mlp(backbone.feature_dim, projector_hidden_dim, projector_out_dim, num_layers=projector_layers,
                             batch_norm=True, last_batch_norm=True, last_affine=False)
        self.predictor = mlp(projector_out_dim, predictor_hidden_dim, projector_out_dim, batch_norm=True,
                             last_batch_norm=predictor_last_batch_norm, last_affine=False)
        self.momentum_encoder = MomentumEncoder(self.online)
        self.temperature = temperature
        self.momentum_base, self.momentum_final = momentum_base, momentum_final
        self.setup_losses()

    @classmethod
    def from_config(cls, cfg: PretrainConfig, backbone: nn.Module, augment: BatchAugment, scorer=None) -> MoCoV3:
        return cls(backbone, augment, cfg.optimizer, cfg.projector_hidden_dim, cfg.projector_out_dim,
                   cfg.predictor_hidden_dim, cfg.temperature, cfg.momentum.base, cfg.momentum.final,
                   cfg.channels_last, cfg.synthetic, scorer)

    def setup_losses(self) -> None:
        self.criterion = MoCoLoss(self.temperature, gather_distributed=world_size() > 1)

    def setup(self, stage: str) -> None:
        self.setup_losses()  # the world size is known only now

    @property
    def online(self) -> nn.Module:
        return nn.Sequential(self.backbone, self.projector)

    def embed(self, x: torch.Tensor) -> Outputs:
        z = self.projector(self.backbone(x))
        return {"z": z, "p": self.predictor(z)}

    def pair_loss(self, outputs, views, batch, weights):
        k1, k2 = self.forward_views(self.momentum_encoder, views)
        q1, q2 = outputs[0]["p"], outputs[1]["p"]
        scale = 2 * self.temperature
        loss = scale * (self.criterion(q1, k2, weights=weights) + self.criterion(q2, k1, weights=weights))
        return loss, {"mocov3": loss}

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        tau = cosine_momentum(self.global_step, self.total_steps, self.momentum_base, self.momentum_final)
        self.momentum_encoder.update(self.online, tau)
