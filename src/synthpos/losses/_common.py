"""What the losses share: argument checks and the temperature + gathering base."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def check_gather_available(gather_distributed: bool) -> None:
    """Raise ValueError when gathering over ranks is asked for but this torch build has no torch.distributed."""
    if gather_distributed and not dist.is_available():
        raise ValueError(
            "gather_distributed=True but torch.distributed is not available in this "
            "torch build; set gather_distributed=False"
        )


def check_extra_negatives(extra_negatives: torch.Tensor | None, n: int, d: int) -> None:
    """Raise ValueError unless ``extra_negatives`` is None or one set of negatives per anchor. Shape: (n, S, d)."""
    if extra_negatives is not None and (extra_negatives.dim() != 3 or extra_negatives.shape[0] != n
                                        or extra_negatives.shape[2] != d):
        raise ValueError(f"extra_negatives must have shape ({n}, S, {d}); got {tuple(extra_negatives.shape)}")


def extra_logits(anchors: torch.Tensor, extra_negatives: torch.Tensor, temperature: float) -> torch.Tensor:
    """Each (unit) anchor's logits against its own extra negatives (normalised here). Shape: (n, D), (n, S, D) -> (n, S)."""
    extra = F.normalize(extra_negatives.to(anchors), dim=2)
    return torch.einsum("nd,nsd->ns", anchors, extra) / temperature


class TemperatureLoss(nn.Module):
    """Base of the softmax losses: a positive ``temperature`` and opt-in ``gather_distributed``.

    Raises:
        ValueError: If ``temperature`` is not positive, or ``gather_distributed`` is set
            but ``torch.distributed`` is not available.
    """

    def __init__(self, temperature: float, gather_distributed: bool = False) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        check_gather_available(gather_distributed)
        self.temperature = float(temperature)
        self.gather_distributed = bool(gather_distributed)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"
