"""``clsp`` (Zeng et al., ECCV 2024): a third view from one stored candidate, pulled towards view 1."""

from __future__ import annotations

import numpy as np
import torch

from synthpos.data.batch import PretrainBatch, stored_candidates
from synthpos.data.synthetic_store import SyntheticStore
from synthpos.losses import SyntheticPositiveLoss
from synthpos.modes.base import SyntheticMode, register_mode


@register_mode("clsp")
class CLSP(SyntheticMode):
    """Data: ``synthetic`` (B, C, H, W), one candidate per anchor drawn uniformly and anew each time.

    Loss: the method's loss plus ``weight * mean(2 - 2 cos(e1, e3))``, ``e`` the method's
    online embedding named by its ``synthetic_key``; the synthetic view is never a negative.
    """

    for_every_method = True

    def __init__(self, config) -> None:
        super().__init__(config)
        self.term = SyntheticPositiveLoss()

    def fill(self, batch: PretrainBatch, store: SyntheticStore, rng: np.random.Generator) -> None:
        idx = batch.indices.numpy()
        batch.synthetic = stored_candidates(store, idx, rng.integers(0, store.candidates, size=len(idx)))

    def sources(self, batch: PretrainBatch) -> list[torch.Tensor]:
        return [*super().sources(batch), batch.synthetic]

    def loss(self, method, views, outputs, batch):
        loss, logs = self.method_loss(method, views, outputs, batch)
        key = method.synthetic_key
        synthetic = self.term(outputs[0][key], outputs[2][key])
        total = loss + self.config.weight * synthetic
        return total, {**logs, "method": loss, "synthetic": synthetic, "loss": total}
