"""MoCo v2+ (Chen et al., 2020, with solo-learn's symmetric loss); CLSP-MoCo with ``synthetic.mode=clsp``."""

from __future__ import annotations

import torch
from torch import nn

from synthpos.losses import MoCoLoss
from synthpos.methods.base import Outputs, register_method
from synthpos.methods.momentum import MomentumMethod
from synthpos.models.heads import mlp
from synthpos.models.memory import MemoryQueue
from synthpos.modes.contrast import NEGATIVES, PAIRS, Objective, Term


@register_method("mocov2plus")
class MoCoV2Plus(MomentumMethod):
    """MoCo v2+: queries from the online encoder, keys from its momentum copy, a queue of negatives per view.

    Loss: ``(InfoNCE(q1, k2, queue2) + InfoNCE(q2, k1, queue1)) / 2``; after each step the
    momentum encoder moves towards the online one (cosine schedule ``base -> final``) and
    the keys of all ranks enter the queues. CLSP-MoCo adds ``lambda * mean(2 - 2 cos(q1, q3))``.
    Projector: Linear(hidden) - ReLU - Linear(out).
    """

    contrasts = frozenset({PAIRS, NEGATIVES})

    def build_heads(self) -> None:
        c = self.shared
        self.projector = mlp(self.backbone.feature_dim, c.projector_hidden_dim, c.projector_out_dim)
        self.queues = nn.ModuleList([MemoryQueue(c.queue_size, c.projector_out_dim) for _ in range(2)])
        self._keys: tuple[torch.Tensor, ...] = ()

    def setup_losses(self) -> None:
        self.criterion = MoCoLoss(self.shared.temperature)

    def embed(self, x: torch.Tensor) -> Outputs:
        return {"z": self.projector(self.backbone(x))}

    def objective(self, outputs, views, batch) -> Objective:
        k1, k2 = self.momentum_keys(views)
        q1, q2 = outputs[0]["z"], outputs[1]["z"]
        queue1, queue2 = (q.queue for q in self.queues)  # copies: enqueue after the step must not change them
        self._keys = (k1, k2)
        # Each query meets the other view's queue.
        return Objective([
            Term(lambda w, e: self.criterion(q1, k2, queue2, weights=w, extra_negatives=e), weighted=True,
                 queries=q1, negatives=queue2),
            Term(lambda w, e: self.criterion(q2, k1, queue1, weights=w, extra_negatives=e), weighted=True,
                 queries=q2, negatives=queue1),
        ], "moco", combine=lambda v: (v[0] + v[1]) / 2)

    def after_momentum_step(self) -> None:
        for queue, keys in zip(self.queues, self._keys):
            queue.enqueue(keys)
        self._keys = ()
