"""Momentum (EMA) encoders with the cosine momentum schedule of BYOL / MoCo v2+ / MoCo v3 / All4One, and their base."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from synthpos.methods.base import SSLMethod


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


class MomentumMethod(SSLMethod):
    """A method with a momentum copy of :attr:`online`: holds the copy, its keys and its EMA schedule.

    After :meth:`~SSLMethod.build_heads` the base's constructor is done; this class then copies
    ``online`` (default backbone + projector). After each optimiser step the copy moves
    towards the online network with ``tau`` on the cosine schedule ``pretrain.momentum.base ->
    final``, then :meth:`after_momentum_step` runs (queues and support sets enqueue there).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.momentum_encoder = MomentumEncoder(self.online)

    @property
    def online(self) -> nn.Module:
        """The part of the network the momentum copy follows."""
        return nn.Sequential(self.backbone, self.projector)

    def momentum_keys(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The momentum copy's outputs for each view, in fp32 and without gradient. Shape: (B, D) each."""
        return self.momentum_encoder(torch.cat(views)).float().chunk(len(views))

    def momentum(self) -> float:
        """``tau`` of this step."""
        s = self.shared
        return cosine_momentum(self.global_step, self.total_steps, s.momentum_base, s.momentum_final)

    def after_momentum_step(self) -> None:
        """Runs after each EMA update; default nothing."""

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.momentum_encoder.update(self.online, self.momentum())
        self.after_momentum_step()
