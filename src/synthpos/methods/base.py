"""The thin base every joint-embedding method builds on.

It owns what all methods share and nothing else: the backbone, the batched view
augmentation, and the optimiser with its warm-up + cosine schedule. A method adds
its heads and implements :meth:`SSLMethod.compute_loss`. Probes and kNN monitors
are callbacks (synthpos.evaluation.monitor), not part of this class.
"""

from __future__ import annotations

import torch
import lightning as L
from torch import nn

from synthpos.config import OptimizerConfig
from synthpos.data.augment import BatchAugment
from synthpos.methods.optim import LARS, parameter_groups, warmup_cosine


class SSLMethod(L.LightningModule):
    """Backbone + augmentation + optimiser; subclasses define the loss.

    A training batch is a dict with ``images`` (uint8 (B, C, H, W)), ``indices`` (B,)
    and, with synthetic positives, ``synthetic`` (uint8 (B, C, H, W)): one stored
    candidate of each anchor. Views are made here, on the training device.
    """

    def __init__(self, backbone: nn.Module, augment: BatchAugment, optimizer: OptimizerConfig, channels_last: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.augment = augment
        self.optimizer_config = optimizer
        self.channels_last = channels_last
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)

    def views(self, images: torch.Tensor, count: int) -> list[torch.Tensor]:
        out = [self.augment(images) for _ in range(count)]
        if self.channels_last:
            out = [v.contiguous(memory_format=torch.channels_last) for v in out]
        return out

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one batch and the values to log."""
        raise NotImplementedError

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, logs = self.compute_loss(batch)
        self.log_dict({f"train/{k}": v.detach() for k, v in logs.items()}, prog_bar=True, sync_dist=False)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=False)
        return loss

    def configure_optimizers(self):
        cfg = self.optimizer_config
        groups = parameter_groups(self, cfg.weight_decay)
        if cfg.name == "lars":
            opt = LARS(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = int(cfg.warmup_epochs * per_epoch)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, total, warmup, cfg.lr, cfg.warmup_start_lr, cfg.min_lr) / cfg.lr
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
