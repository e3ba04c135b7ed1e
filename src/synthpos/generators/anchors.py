"""The control generator (``generate.kind: anchors``): every candidate is the anchor itself.

A synthetic mode fed this store trains with the same number of views, steps and
evaluation as with a real generator's store, but every extra view is the method's own
augmentation of the real image: nothing is generated. The difference between a run on a
generator's store and the same run on this one is what the generated images add beyond
an extra augmented view (issue 24). ``replace`` at p = 1 on this store is plain two-view
training (view 2 is the anchor, augmented), so its control is ``none``.

No weights, no training (``run`` skips stage 1), no randomness: the candidates do not
depend on the seed, and the record leaves it out, so every seed shares one store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from synthpos.generators.registry import CandidateGenerator, register_generator

__all__ = ["AnchorsGenerator"]


@register_generator("anchors")
class AnchorsGenerator(CandidateGenerator):
    """K uint8 copies of each anchor: the real-view control of any synthetic run.

    Args:
        generator_dir: ignored (there are no weights; ``generate.generator`` may be left unset).
        settings: None (it has no settings of its own).
        seed: ignored (the copies draw nothing).
        device: ignored (copies are made on the CPU).
        candidates: K, the copies per anchor; the other keywords (batching, precision) are ignored.
    """

    trains_on_data = False  # nothing to train: `run` skips stage 1

    def __init__(self, generator_dir: Path | None, settings: None = None, seed: int = 0, device: Any = None, *,
                 candidates: int, **unused: Any) -> None:
        self.candidates = candidates

    def record(self) -> dict[str, Any]:
        """Kind and K: all that decides the bytes (no weights, no seed, no precision)."""
        return {"kind": "anchors", "candidates": self.candidates}

    def generate(self, anchors: np.ndarray, first_index: int, labels: np.ndarray | None = None, bar: Any = None) -> np.ndarray:
        """Shape: anchors (n, H, W, C) uint8 -> (n, K, H, W, C) uint8, each candidate equal to its anchor."""
        anchors = np.asarray(anchors, dtype=np.uint8)
        out = np.repeat(anchors[:, None], self.candidates, axis=1)  # a copy, not a broadcast view: the store writes it
        if bar is not None:
            bar.update(out.shape[0] * out.shape[1])
        return out
