"""What a method needs to train under Lightning, kept apart so that reading a method does not import Lightning.

A method class (:class:`~synthpos.methods.base.SSLMethod`) is a plain ``nn.Module``: its heads,
its views and its loss, usable in any training loop (the benchmarks run it in a bare loop).
The config reads every method module to know its settings, so those modules must stay light.
Training wraps nothing: :func:`lightning_class` derives, once per method class, a class that is
the method *and* a ``LightningModule``, with the Trainer's steps of :class:`TrainingSteps` (the
optimiser, its schedule, logging). The module tree, the state_dict keys and the hooks a method
defines (``setup``, ``on_train_batch_end``) are the method's own, so checkpoints are unchanged.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import torch

from synthpos.data.batch import PretrainBatch
from synthpos.methods.optim import LARS, parameter_groups, split_static_lr, warmup_cosine

if TYPE_CHECKING:
    from synthpos.methods.base import SSLMethod


class TrainingSteps:
    """The Trainer's steps of a method: the loss logged, SGD or LARS with warm-up + cosine.

    A mix-in for :func:`lightning_class` only: it reads ``self.trainer``, ``self.log`` (the
    ``LightningModule``'s) and the method's ``optimizer_config``, :meth:`compute_loss` and
    :meth:`static_lr_parameters`.
    """

    def training_step(self, batch: PretrainBatch, batch_idx: int) -> torch.Tensor:
        loss, logs = self.compute_loss(batch)
        self.log_dict({f"train/{k}": v.detach() for k, v in logs.items()}, prog_bar=True, sync_dist=False)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=False)
        return loss

    def configure_optimizers(self):
        cfg = self.optimizer_config
        groups = split_static_lr(parameter_groups(self, cfg.weight_decay, cfg.exclude_bias_and_norm),
                                 self.static_lr_parameters())
        if cfg.name == "lars":
            opt = LARS(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, eta=cfg.eta,
                       trust=cfg.lars_trust, clip=cfg.lars_clip)
        else:
            opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        total = self.total_steps
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = int(cfg.warmup_epochs * per_epoch)

        def scheduled(step: int) -> float:
            return warmup_cosine(step, total, warmup, cfg.lr, cfg.warmup_start_lr, cfg.min_lr) / cfg.lr

        lambdas = [(lambda step: 1.0) if g.get("static_lr") else scheduled for g in opt.param_groups]
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambdas)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


@cache
def lightning_class(method: type[SSLMethod]) -> type[SSLMethod]:
    """``method`` as a ``LightningModule`` (made once per class): ``trainer.fit`` takes its instances.

    The method comes first in the order of bases, so its own hooks (``setup``, ``forward``,
    ``on_train_batch_end``) are the ones Lightning calls; :class:`TrainingSteps` adds the
    training step and the optimiser. The instance is built with the method's own arguments.
    Not picklable by name (``ddp_spawn`` is not supported; ``ddp`` and torchrun re-run the script).
    """
    import lightning as L  # here, not at the top: reading a method must not import Lightning

    return type(method.__name__, (method, TrainingSteps, L.LightningModule),
                {"__module__": __name__, "__qualname__": f"lightning_class.<{method.__qualname__}>",
                 "__doc__": method.__doc__})
