"""BYOL (Grill et al., NeurIPS 2020): predict the momentum encoder's projection of the other view."""

from __future__ import annotations

import torch
from torch import nn

from synthpos.config import OptimizerConfig, PretrainConfig, SyntheticConfig
from synthpos.data.augment import BatchAugment
from synthpos.losses import NegativeCosineSimilarity
from synthpos.methods.base import Outputs, SSLMethod
from synthpos.methods.momentum import MomentumEncoder, cosine_momentum
from synthpos.models.heads import mlp


class BYOL(SSLMethod):
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

    def __init__(
        self,
        backbone: nn.Module,
        augment: BatchAugment,
        optimizer: OptimizerConfig,
        projector_hidden_dim: int = 4096,
        projector_out_dim: int = 256,
        predictor_hidden_dim: int = 4096,
        momentum_base: float = 0.99,
        momentum_final: float = 1.0,
        channels_last: bool = True,
        synthetic: SyntheticConfig | None = None,
        scorer: nn.Module | None = None,
    ) -> None:
        super().__init__(backbone, augment, optimizer, channels_last, synthetic, scorer)
        self.projector = mlp(backbone.feature_dim, projector_hidden_dim, projector_out_dim, batch_norm=True)
        self.predictor = mlp(projector_out_dim, predictor_hidden_dim, projector_out_dim, batch_norm=True)
        self.momentum_encoder = MomentumEncoder(self.online)
        self.criterion = NegativeCosineSimilarity(dim=1)
        self.momentum_base, self.momentum_final = momentum_base, momentum_final

    @classmethod
    def from_config(cls, cfg: PretrainConfig, backbone: nn.Module, augment: BatchAugment, scorer=None) -> BYOL:
        return cls(backbone, augment, cfg.optimizer, cfg.projector_hidden_dim, cfg.projector_out_dim,
                   cfg.predictor_hidden_dim, cfg.momentum.base, cfg.momentum.final, cfg.channels_last,
                   cfg.synthetic, scorer)

    @property
    def online(self) -> nn.Module:
        return nn.Sequential(self.backbone, self.projector)

    def embed(self, x: torch.Tensor) -> Outputs:
        z = self.projector(self.backbone(x))
        return {"z": z, "p": self.predictor(z)}

    def regression(self, p: torch.Tensor, k: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """``mean_i(w_i * (2 - 2 cos(p_i, k_i)))`` (w = 1 without weights). Shape: (N, D), (N, D) -> ()."""
        # mean(w * (2 - 2 cos)) = 2 mean(w) + 2 * (-mean(w cos)), the second term being the criterion.
        scale = 1.0 if weights is None else weights.detach().mean()
        return 2 * scale + 2 * self.criterion(p, k, weights=weights)

    def pair_loss(self, outputs, views, batch, weights):
        k1, k2 = self.forward_views(self.momentum_encoder, views)
        p1, p2 = outputs[0]["p"], outputs[1]["p"]
        loss = self.regression(p1, k2, weights) + self.regression(p2, k1, weights)
        return loss, {"byol": loss}

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        tau = cosine_momentum(self.global_step, self.total_steps, self.momentum_base, self.momentum_final)
        self.momentum_encoder.update(self.online, tau)
