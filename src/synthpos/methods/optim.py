"""Optimisers and learning-rate schedules for pretraining: SGD, LARS, warm-up + cosine."""

from __future__ import annotations

import math

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    Each parameter's update ``d = g + weight_decay * w`` is scaled by its trust ratio, then
    accumulated in the momentum buffer (``w -= lr * buf``). The trust ratio (1 where
    ``||w||`` or ``||g||`` is 0) is, by ``trust``:

    * ``"update"``: ``eta * ||w|| / ||d||``, as SimCLR's LARS;
    * ``"grad_and_decay"``: ``eta * ||w|| / (||g|| + weight_decay * ||w|| + 1e-8)``, as
      solo-learn's (lightning-bolts) and mmpretrain's LARS, which GenerativeSSL and GenView run.

    With ``clip`` the ratio becomes ``min(ratio / lr, 1)`` (solo-learn's ``clip_lr``: each
    layer's rate is ``min(ratio, lr)`` instead of ``lr * ratio``). Parameters in groups with
    ``lars_exclude=True`` (biases and normalisation layers) get plain SGD and no weight
    decay, as all three codes do with their bias/norm exclusion.
    """

    def __init__(
        self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02,
        trust: str = "update", clip: bool = False,
    ) -> None:
        if trust not in ("update", "grad_and_decay"):
            raise ValueError(f"LARS trust must be 'update' or 'grad_and_decay', got {trust!r}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False,
                                      trust=trust, clip=clip))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not group["lars_exclude"]:
                    wd = group["weight_decay"]
                    w_norm, raw_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    if wd:
                        grad = grad.add(p, alpha=wd)
                    if group["trust"] == "update":
                        g_norm = torch.linalg.vector_norm(grad)
                        ratio = group["eta"] * w_norm / g_norm
                    else:
                        g_norm = raw_norm
                        ratio = group["eta"] * w_norm / (raw_norm + wd * w_norm + 1e-8)
                    if group["clip"]:
                        ratio = torch.clamp(ratio / group["lr"], max=1.0)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(w_norm))
                    grad = grad.mul(trust)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = grad.clone()
                else:
                    buf.mul_(group["momentum"]).add_(grad)
                p.add_(buf, alpha=-group["lr"])
        return loss


def parameter_groups(model: nn.Module, weight_decay: float, exclude_bias_and_norm: bool = True) -> list[dict]:
    """Biases and normalisation parameters get no weight decay (and no LARS scaling).

    With ``exclude_bias_and_norm=False`` every parameter is decayed (one group), as the
    official CLSP code's ``SGD(model.parameters(), weight_decay=...)``.
    """
    if not exclude_bias_and_norm:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]


def split_static_lr(groups: list[dict], static: list[nn.Parameter]) -> list[dict]:
    """``groups`` with the ``static`` parameters moved into copies of their groups marked ``static_lr``
    (their lr is not scheduled); empty groups dropped."""
    if not static:
        return groups
    ids = {id(p) for p in static}
    out = []
    for group in groups:
        for fixed in (False, True):
            params = [p for p in group["params"] if (id(p) in ids) is fixed]
            if params:
                out.append({**group, "params": params, **({"static_lr": True} if fixed else {})})
    return out


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, base_lr: float, start_lr: float, min_lr: float) -> float:
    """Linear warm-up from ``start_lr`` to ``base_lr``, then cosine decay to ``min_lr``."""
    if step < warmup_steps:
        return start_lr + (base_lr - start_lr) * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))
