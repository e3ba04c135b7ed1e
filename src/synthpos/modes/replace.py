"""``replace`` (Ayromlou et al., 2024): a view's source is a stored candidate with probability p.

Which view (``pretrain.synthetic.replace_view``) and whether a synthetic view is cropped
(``crop_synthetic``) follow the papers' loaders: GenerativeSSL's solo-learn/DALI loader
replaces view 2 (``second``), its SimCLR loader each view independently and without
RandomResizedCrop (``each``, ``crop_synthetic: false``), GenView one view per image drawn
uniformly (``random``).
"""

from __future__ import annotations

import numpy as np
import torch

from synthpos.config import SyntheticConfig
from synthpos.data.batch import PretrainBatch, stored_candidates
from synthpos.data.synthetic_store import SyntheticStore
from synthpos.modes.base import SyntheticMode, register_mode


def replacement_draws(n: int, candidates: int, prob: float, where: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Which views of ``n`` images take a stored candidate, and which candidate.

    Returns:
        ``replaced`` bool and ``choice`` int (the candidate index where replaced). Shape: (n, 2) each.
    """
    if where == "each":
        choice = rng.integers(0, candidates, size=(n, 2))  # two synthetic views: two independent candidates
        return rng.random((n, 2)) < prob, choice
    # The draws of "second" are the ones this mode made before replace_view existed (same stream).
    choice = rng.integers(0, candidates, size=n)
    use = rng.random(n) < prob
    view = np.ones(n, dtype=np.int64) if where == "second" else rng.integers(0, 2, size=n)
    replaced = np.stack([use & (view == 0), use & (view == 1)], axis=1)
    return replaced, np.stack([choice, choice], axis=1)


@register_mode("replace")
class Replace(SyntheticMode):
    """Data: ``second`` (and ``first``) (B, C, H, W), a uniformly drawn candidate with probability
    ``replace_prob`` in the views ``replace_view`` names, else the real image; ``replaced`` (B, 2)
    marks them. The loss is the method's own."""

    for_every_method = True

    @classmethod
    def plain_on_anchors(cls, config: SyntheticConfig) -> bool:
        """At p = 1 with synthetic views cropped like real ones (and every other synthetic setting at its
        default), each view on the anchors store is the anchor, augmented as a real view: plain training,
        whichever views ``replace_view`` names."""
        own = {"mode", "replace_prob", "replace_view", "crop_synthetic"}
        others_default = config.model_dump(exclude=own) == type(config)(mode=config.mode).model_dump(exclude=own)
        return others_default and config.replace_prob == 1.0 and config.crop_synthetic

    def fill(self, batch: PretrainBatch, store: SyntheticStore, rng: np.random.Generator) -> None:
        idx = batch.indices.numpy()
        replaced, choice = replacement_draws(len(idx), store.candidates, self.config.replace_prob,
                                             self.config.replace_view, rng)

        def source(v: int) -> torch.Tensor:
            out = batch.images.clone()
            use = replaced[:, v]
            if use.any():
                out[torch.from_numpy(use)] = stored_candidates(store, idx[use], choice[use, v])
            return out

        batch.first = source(0) if replaced[:, 0].any() else None  # None: view 1 from the real images
        batch.second = source(1)
        batch.replaced = torch.from_numpy(replaced)

    def sources(self, batch: PretrainBatch) -> list[torch.Tensor]:
        return [batch.images if batch.first is None else batch.first, *super().sources(batch)[1:]]

    def views(self, method, batch: PretrainBatch) -> list[torch.Tensor]:
        if self.config.crop_synthetic or batch.replaced is None:
            return super().views(method, batch)
        return [method.view(source, no_crop=batch.replaced[:, v], index=v, synthetic=batch.replaced[:, v])
                for v, source in enumerate(self.sources(batch))]
