"""The pretraining batch: one typed record of what a step's views are made from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from synthpos.data.synthetic_store import SyntheticStore


@dataclass
class PretrainBatch:
    """What one pretraining step sees; the synthetic mode fills the optional fields (data side).

    Lightning moves every tensor field to the training device (dataclasses are collections to it).

    Attributes:
        indices: dataset index of each anchor. Shape: (B,).
        images: the real images, uint8. Shape: (B, C, H, W).
        labels: class labels, -1 where unlabelled. Shape: (B,).
        second: the source of view 2 where a mode replaces it (replace, quality), else None
            (view 2 is made from ``images``). uint8 (B, C, H, W).
        first: the source of view 1 where a mode replaces it (replace/quality with ``replace_view``
            each or random), else None (view 1 is made from ``images``). uint8 (B, C, H, W).
        replaced: which of views 1 and 2 have a stored candidate as source (replace, quality), bool
            (B, 2); None otherwise.
        synthetic: stored candidates that become extra views: (B, C, H, W) for one per anchor
            (clsp), (B, P, C, H, W) for P per anchor (multipos); None otherwise.
    """

    indices: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor | None = None
    second: torch.Tensor | None = None
    synthetic: torch.Tensor | None = None
    first: torch.Tensor | None = None
    replaced: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.indices)


def stored_candidates(store: SyntheticStore, idx: np.ndarray, choice: np.ndarray) -> torch.Tensor:
    """Candidate ``choice[i]`` of anchor ``idx[i]``, as uint8 (B, C, H, W)."""
    return torch.from_numpy(store.get(idx, choice)).permute(0, 3, 1, 2).contiguous()
