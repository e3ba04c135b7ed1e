"""``replace`` (Ayromlou et al., 2024): view 2's source is a stored candidate with probability p."""

from __future__ import annotations

import numpy as np
import torch

from synthpos.data.batch import PretrainBatch, stored_candidates
from synthpos.data.synthetic_store import SyntheticStore
from synthpos.modes.base import SyntheticMode, register_mode


@register_mode("replace")
class Replace(SyntheticMode):
    """Data: ``second`` (B, C, H, W), a uniformly drawn candidate with probability ``replace_prob``,
    else the real image. The loss is the method's own."""

    for_every_method = True

    def fill(self, batch: PretrainBatch, store: SyntheticStore, rng: np.random.Generator) -> None:
        idx = batch.indices.numpy()
        choice = rng.integers(0, store.candidates, size=len(idx))
        use = rng.random(len(idx)) < self.config.replace_prob
        second = batch.images.clone()
        if use.any():
            second[torch.from_numpy(use)] = stored_candidates(store, idx[use], choice[use])
        batch.second = second
