"""The thin base every joint-embedding method builds on.

It owns what all methods share and nothing else: the backbone, the batched view
augmentation, the ways synthetic positives enter a step (``synthetic.mode``), and
the optimiser with its warm-up + cosine schedule. A method adds its heads and
defines :meth:`SSLMethod.embed` (online outputs of a batch of views) and
:meth:`SSLMethod.pair_loss` (its loss for the two views of each image). Probes and
kNN monitors are callbacks (synthpos.evaluation.monitor), not part of this class.

Synthetic modes, for every method unless noted:

- ``clsp``: a third view made from one stored candidate; the loss gains
  ``weight * mean(2 - 2 cos(e1, e3))`` where ``e`` is the method's online embedding
  (:attr:`SSLMethod.synthetic_key`); the synthetic view is never a negative.
- ``replace``: the data side swaps view 2's source for a candidate with probability p;
  nothing changes here.
- ``multipos``: P candidates per anchor become extra views, all positives of each other
  and of the real views in a multi-positive InfoNCE (methods that define
  :meth:`SSLMethod.multipos_loss`).
- ``quality``: ``replace`` plus GenView's per-pair weights from a frozen scorer, passed to
  :meth:`SSLMethod.pair_loss` (methods whose loss is a sum over positive pairs).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import lightning as L
from torch import nn

from synthpos.config import OptimizerConfig, SyntheticConfig
from synthpos.data.augment import BatchAugment
from synthpos.losses import SyntheticPositiveLoss
from synthpos.methods.optim import LARS, parameter_groups, warmup_cosine

Outputs = dict[str, torch.Tensor]


class SSLMethod(L.LightningModule):
    """Backbone + augmentation + synthetic modes + optimiser; subclasses define heads and loss.

    A training batch is a dict with ``images`` (uint8 (B, C, H, W)), ``indices`` (B,),
    ``labels`` (B,) or None, and, depending on the synthetic mode, ``second`` (uint8
    (B, C, H, W): the source of view 2, a candidate or the real image; replace/quality)
    or ``synthetic`` (uint8 (B, C, H, W) for clsp, (B, P, C, H, W) for multipos). Views
    are made here, on the training device.

    Args:
        backbone: encoder with a ``feature_dim`` attribute; (B, C, H, W) -> (B, D).
        augment: the view augmentation (applied to whole uint8 batches).
        optimizer: optimiser and schedule settings.
        channels_last: run convolutions in channels-last memory format.
        synthetic: how synthetic candidates enter the loss (default: not at all).
        scorer: quality mode's frozen pair scorer (:class:`synthpos.models.scorer.QualityScorer`).
    """

    #: key of :meth:`embed`'s output that the CLSP term pulls together
    synthetic_key: ClassVar[str] = "z"
    #: whether the method uses class labels (supervised)
    needs_labels: ClassVar[bool] = False
    #: forward each view alone (BatchNorm statistics per view, as the official MoCo code)
    per_view_batchnorm: bool = False

    def __init__(
        self,
        backbone: nn.Module,
        augment: BatchAugment,
        optimizer: OptimizerConfig,
        channels_last: bool = True,
        synthetic: SyntheticConfig | None = None,
        scorer: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.augment = augment
        self.optimizer_config = optimizer
        self.channels_last = channels_last
        self.synthetic = synthetic or SyntheticConfig()
        self.clsp_term = SyntheticPositiveLoss()
        # Not a submodule: the frozen scorer is neither trained nor checkpointed.
        self.__dict__["scorer"] = scorer
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)

    # --- what a method defines -------------------------------------------------------------

    def embed(self, x: torch.Tensor) -> Outputs:
        """Online outputs (e.g. ``{"z": projection, "p": prediction}``) of a batch of views. Shape: (B, ...)."""
        raise NotImplementedError

    def pair_loss(
        self, outputs: list[Outputs], views: list[torch.Tensor], batch: dict, weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The method's loss for views 1 and 2 of each image, and the values to log.

        Args:
            outputs: :meth:`embed` of view 1 and view 2.
            views: the two augmented views (momentum methods encode them again).
            batch: the training batch (``labels`` for supervised methods).
            weights: quality mode's per-pair weights (B,), or None.
        """
        raise NotImplementedError

    def multipos_loss(self, outputs: list[Outputs], batch: dict) -> torch.Tensor:
        """multipos mode: the loss over all views (2 real + P synthetic per image)."""
        raise NotImplementedError(f"{type(self).__name__} has no multi-positive loss")

    # --- shared machinery ------------------------------------------------------------------

    def view(self, images: torch.Tensor) -> torch.Tensor:
        out = self.augment(images)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    def forward_views(self, module, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """``module`` (e.g. a momentum encoder) of every view: one pass, or one per view when
        :attr:`per_view_batchnorm` is set. Shape: V x (B, ...) -> V x (B, D)."""
        if self.per_view_batchnorm:
            return [module(v).float() for v in views]
        return list(module(torch.cat(views)).float().chunk(len(views)))

    def embed_views(self, views: list[torch.Tensor]) -> list[Outputs]:
        """:meth:`embed` of every view in one pass (larger batches run faster on every device),
        or of each view alone when :attr:`per_view_batchnorm` is set."""
        if self.per_view_batchnorm:
            return [{k: v.float() for k, v in self.embed(view).items()} for view in views]
        out = self.embed(torch.cat(views))
        parts = {k: v.float().chunk(len(views)) for k, v in out.items()}
        return [{k: parts[k][i] for k in parts} for i in range(len(views))]

    def sources(self, batch: dict) -> list[torch.Tensor]:
        """The uint8 images each view is made from, in view order."""
        images = batch["images"]
        sources = [images, batch.get("second", images)]
        mode = self.synthetic.mode
        if mode == "clsp":
            sources.append(batch["synthetic"])
        elif mode == "multipos":
            sources.extend(batch["synthetic"].unbind(1))
        return sources

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one batch and the values to log."""
        mode = self.synthetic.mode
        views = [self.view(s) for s in self.sources(batch)]
        outputs = self.embed_views(views)
        if mode == "multipos":
            loss = self.multipos_loss(outputs, batch)
            return loss, {"loss": loss}
        weights = None
        if mode == "quality":
            weights = self.scorer.pair_weights(views[0], views[1])
        loss, logs = self.pair_loss(outputs[:2], views[:2], batch, weights)
        if mode == "clsp":
            key = self.synthetic_key
            synthetic = self.clsp_term(outputs[0][key], outputs[2][key])
            logs = {**logs, "method": loss, "synthetic": synthetic}
            loss = loss + self.synthetic.weight * synthetic
        logs["loss"] = loss
        return loss, logs

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, logs = self.compute_loss(batch)
        self.log_dict({f"train/{k}": v.detach() for k, v in logs.items()}, prog_bar=True, sync_dist=False)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=False)
        return loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    @property
    def total_steps(self) -> int:
        """Optimiser steps of the whole run (for momentum schedules)."""
        return max(1, int(self.trainer.estimated_stepping_batches))

    def configure_optimizers(self):
        cfg = self.optimizer_config
        groups = parameter_groups(self, cfg.weight_decay, cfg.exclude_bias_and_norm)
        if cfg.name == "lars":
            opt = LARS(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        total = self.total_steps
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = int(cfg.warmup_epochs * per_epoch)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, total, warmup, cfg.lr, cfg.warmup_start_lr, cfg.min_lr) / cfg.lr
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
