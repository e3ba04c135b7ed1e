"""Momentum (EMA) encoders with the cosine momentum schedule of BYOL / MoCo v2+ / MoCo v3."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def cosine_momentum(step: int, total_steps: int, base: float, final: float) -> float:
    """``final - (final - base) * (cos(pi * step / total) + 1) / 2``: ``base`` at step 0, ``final`` at the end."""
    if total_steps <= 0:
        return final
    progress = min(1.0, step / total_steps)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


class MomentumEncoder(nn.Module):
    """A frozen copy of ``online`` updated as ``target = tau * target + (1 - tau) * online``.

    Buffers (BatchNorm running statistics) are copied, not averaged. The copy never
    receives gradients; call :meth:`update` after each optimiser step.

    Example:
        >>> target = MomentumEncoder(nn.Sequential(backbone, projector))
        >>> k = target(x)                 # no gradient
        >>> target.update(nn.Sequential(backbone, projector), tau=0.99)
    """

    def __init__(self, online: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(online)
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, online: nn.Module, tau: float) -> None:
        target = list(self.module.parameters())
        source = list(online.parameters())
        if len(target) != len(source):
            raise ValueError("the online module does not match the momentum copy")
        torch._foreach_mul_(target, tau)
        torch._foreach_add_(target, [p.detach() for p in source], alpha=1.0 - tau)
        for t, s in zip(self.module.buffers(), online.buffers()):
            t.copy_(s)
