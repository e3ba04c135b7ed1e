"""MoCo v2+ (Chen et al., 2020, with solo-learn's symmetric loss); CLSP-MoCo with ``synthetic.mode=clsp``."""

from __future__ import annotations

import torch
from torch import nn

from synthpos.config import OptimizerConfig, PretrainConfig, SyntheticConfig
from synthpos.data.augment import BatchAugment
from synthpos.losses import MoCoLoss
from synthpos.methods.base import Outputs, SSLMethod
from synthpos.methods.momentum import MomentumEncoder, cosine_momentum
from synthpos.models.heads import mlp
from synthpos.models.memory import MemoryQueue


class MoCoV2Plus(SSLMethod):
    """MoCo v2+: queries from the online encoder, keys from its momentum copy, a queue of negatives per view.

    Loss: ``(InfoNCE(q1, k2, queue2) + InfoNCE(q2, k1, queue1)) / 2``; after each step the
    momentum encoder moves towards the online one (cosine schedule ``base -> final``) and
    the keys of all ranks enter the queues. CLSP-MoCo adds ``lambda * mean(2 - 2 cos(q1, q3))``.
    Projector: Linear(hidden) - ReLU - Linear(out).
    """

    def __init__(
        self,
        backbone: nn.Module,
        augment: BatchAugment,
        optimizer: OptimizerConfig,
        projector_hidden_dim: int = 2048,
        projector_out_dim: int = 256,
        temperature: float = 0.2,
        queue_size: int = 65536,
        momentum_base: float = 0.99,
        momentum_final: float = 1.0,
        channels_last: bool = True,
        synthetic: SyntheticConfig | None = None,
        scorer: nn.Module | None = None,
    ) -> None:
        super().__init__(backbone, augment, optimizer, channels_last, synthetic, scorer)
        self.projector = mlp(backbone.feature_dim, projector_hidden_dim, projector_out_dim)
        self.momentum_encoder = MomentumEncoder(self.online)
        self.queues = nn.ModuleList([MemoryQueue(queue_size, projector_out_dim) for _ in range(2)])
        self.criterion = MoCoLoss(temperature)
        self.momentum_base, self.momentum_final = momentum_base, momentum_final
        self._keys: tuple[torch.Tensor, ...] = ()

    @classmethod
    def from_config(cls, cfg: PretrainConfig, backbone: nn.Module, augment: BatchAugment, scorer=None) -> MoCoV2Plus:
        return cls(backbone, augment, cfg.optimizer, cfg.projector_hidden_dim, cfg.projector_out_dim, cfg.temperature,
                   cfg.queue_size, cfg.momentum.base, cfg.momentum.final, cfg.channels_last, cfg.synthetic, scorer)

    @property
    def online(self) -> nn.Module:
        return nn.Sequential(self.backbone, self.projector)

    def embed(self, x: torch.Tensor) -> Outputs:
        return {"z": self.projector(self.backbone(x))}

    def pair_loss(self, outputs, views, batch, weights):
        k1, k2 = self.forward_views(self.momentum_encoder, views)
        q1, q2 = outputs[0]["z"], outputs[1]["z"]
        queue1, queue2 = (q.queue for q in self.queues)  # copies: enqueue after the step must not change them
        loss = (self.criterion(q1, k2, queue2, weights=weights) + self.criterion(q2, k1, queue1, weights=weights)) / 2
        self._keys = (k1, k2)
        return loss, {"moco": loss}

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        tau = cosine_momentum(self.global_step, self.total_steps, self.momentum_base, self.momentum_final)
        self.momentum_encoder.update(self.online, tau)
        for queue, keys in zip(self.queues, self._keys):
            queue.enqueue(keys)
        self._keys = ()
