"""``multipos``: P stored candidates per anchor as extra positives of a multi-positive InfoNCE."""

from __future__ import annotations

import numpy as np
import torch

from synthpos.data.batch import PretrainBatch, stored_candidates
from synthpos.data.synthetic_store import SyntheticStore
from synthpos.errors import SynthposError
from synthpos.modes.contrast import POSITIVES
from synthpos.modes.base import SyntheticMode, register_mode


@register_mode("multipos")
class MultiPositive(SyntheticMode):
    """Data: ``synthetic`` (B, P, C, H, W), P distinct candidates of each anchor, drawn anew each time.

    Loss: the method's contrast with positives by id (:meth:`~synthpos.methods.base.SSLMethod.positives`)
    over all 2 + P views, every view of an image (of a class, for SupCon) a positive of every other.
    """

    needs = "a multi-positive InfoNCE"
    requires = POSITIVES

    @classmethod
    def check_candidates(cls, config, candidates: int) -> None:
        if config.positives > candidates:
            raise ValueError(f"pretrain.synthetic.positives={config.positives} but generate.candidates={candidates} "
                             "per anchor are made; lower positives or generate more candidates")

    def check_store(self, store: SyntheticStore) -> None:
        positives = self.config.positives
        if positives > store.candidates:
            raise SynthposError(f"pretrain.synthetic.positives={positives} but the store has {store.candidates} "
                                "candidates per anchor; lower positives or generate more candidates")

    def fill(self, batch: PretrainBatch, store: SyntheticStore, rng: np.random.Generator) -> None:
        idx = batch.indices.numpy()
        # P distinct slots per anchor: the first P of a random permutation of its K.
        slots = np.argsort(rng.random((len(idx), store.candidates)), axis=1)[:, : self.config.positives]
        batch.synthetic = torch.stack([stored_candidates(store, idx, slots[:, j]) for j in range(slots.shape[1])], dim=1)

    def sources(self, batch: PretrainBatch) -> list[torch.Tensor]:
        return [*super().sources(batch), *batch.synthetic.unbind(1)]

    def loss(self, method, views, outputs, batch):
        form = method.positives()
        if form is None:  # a method written before positives(), with its own multi-positive loss
            loss = method.multipos_loss(outputs, batch)
        else:
            loss = form.loss([o[form.key] for o in outputs], batch.indices, batch.labels)
        return loss, {"loss": loss}
