"""The thin base every joint-embedding method builds on.

It owns what all methods share and nothing else: the backbone, the batched view
augmentation, the synthetic mode of the run (:mod:`synthpos.modes`, which makes the
views' sources and combines the loss), and the optimiser with its warm-up + cosine
schedule. Probes and kNN monitors are callbacks (synthpos.evaluation.monitor), not part
of this class.

A method is one class registered by name, which declares and defines only what is its own::

    @register_method("simclr")
    class SimCLR(SSLMethod):
        modes = ("multipos", "quality")      # beyond the modes that work with every method
        settings = None                      # or a pydantic model: the section pretrain.simclr

        def build_heads(self) -> None: ...   # reads self.config (PretrainConfig), self.options
        def embed(self, x): ...
        def pair_loss(self, outputs, views, batch, weights): ...

The base builds every method the same way, ``cls(backbone, augment, config, scorer)``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import lightning as L
from pydantic import BaseModel
from torch import nn

from synthpos.config import PretrainConfig
from synthpos.data.augment import BatchAugment
from synthpos.data.batch import PretrainBatch
from synthpos.methods.optim import LARS, parameter_groups, split_static_lr, warmup_cosine
from synthpos.registry import METHODS, MODES

Outputs = dict[str, torch.Tensor]

register_method = METHODS.register


class SSLMethod(L.LightningModule):
    """Backbone + augmentation + the run's synthetic mode + optimiser; subclasses define heads and loss.

    A training batch is a :class:`~synthpos.data.batch.PretrainBatch`; views are made here,
    on the training device, from the sources the mode names.

    Declares (class attributes):
        name: set by ``@register_method("name")``.
        modes: the synthetic modes the method supports beyond those that work with every
            method (clsp, replace, none).
        settings: pydantic model of the method's own section ``pretrain.<name>``, or None.
        synthetic_key: key of :meth:`embed`'s output that the CLSP term pulls together.
        needs_labels: whether the method uses class labels (supervised).

    Args:
        backbone: encoder with a ``feature_dim`` attribute; (B, C, H, W) -> (B, D).
        augment: the view augmentation (applied to whole uint8 batches).
        config: the validated ``pretrain`` section (shared head sizes, temperature, queue,
            momentum, optimiser, synthetic mode); default: ``PretrainConfig(method=name, **overrides)``.
        scorer: quality mode's frozen pair scorer (:class:`synthpos.models.scorer.QualityScorer`).
        **overrides: ``PretrainConfig`` fields, when ``config`` is not given (tests, notebooks).
    """

    name: ClassVar[str]
    modes: ClassVar[tuple[str, ...]] = ()
    settings: ClassVar[type[BaseModel] | None] = None
    synthetic_key: ClassVar[str] = "z"
    needs_labels: ClassVar[bool] = False
    #: forward each view alone (BatchNorm statistics per view, as the official MoCo code)
    per_view_batchnorm: bool = False

    def __init__(
        self, backbone: nn.Module, augment: BatchAugment, config: PretrainConfig | None = None,
        scorer: nn.Module | None = None, **overrides: Any,
    ) -> None:
        super().__init__()
        if config is not None and not isinstance(config, PretrainConfig):
            raise TypeError(f"{type(self).__name__}: config must be a PretrainConfig, got {type(config).__name__} "
                            "(pass settings such as optimizer=... as keywords)")
        if config is None:
            if overrides.get("synthetic") is None:
                overrides.pop("synthetic", None)  # None: no synthetic data, the default
            config = PretrainConfig(method=self.name, **overrides)
        self.config = config
        self.options = config.section(self.name) if self.settings is not None else None
        self.backbone = backbone
        self.augment = augment
        # pretrain.synthetic.augment: views made from stored candidates get their own pipeline (the data's
        # normalisation); None: the same one as real views. No parameters, so the state_dict is unchanged.
        self.synthetic_augment = None if config.synthetic.augment is None else BatchAugment.from_settings(
            config.synthetic.augment, augment.mean, augment.std)
        self.optimizer_config = config.optimizer
        self.channels_last = config.channels_last
        self.per_view_batchnorm = config.per_view_batchnorm
        self.synthetic = config.synthetic
        self.mode = MODES.get(config.synthetic.mode)(config.synthetic)
        # Not a submodule: the frozen scorer is neither trained nor checkpointed.
        self.__dict__["scorer"] = scorer
        if self.channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.build_heads()
        self.setup_losses()

    def setup(self, stage: str) -> None:
        self.setup_losses()  # the world size (whether losses gather) is known only now

    # --- what a method defines -------------------------------------------------------------

    def build_heads(self) -> None:
        """Create the method's heads (and memories) from ``self.config`` / ``self.options``."""

    def setup_losses(self) -> None:
        """Create the loss modules (called again in :meth:`setup`, once the world size is known)."""

    def static_lr_parameters(self) -> list[nn.Parameter]:
        """Parameters whose lr stays at ``optimizer.lr`` (no warm-up, no cosine); default none (SimSiam's predictor)."""
        return []

    def embed(self, x: torch.Tensor) -> Outputs:
        """Online outputs (e.g. ``{"z": projection, "p": prediction}``) of a batch of views. Shape: (B, ...)."""
        raise NotImplementedError

    def pair_loss(
        self, outputs: list[Outputs], views: list[torch.Tensor], batch: PretrainBatch, weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The method's loss for views 1 and 2 of each image, and the values to log.

        Args:
            outputs: :meth:`embed` of view 1 and view 2.
            views: the two augmented views (momentum methods encode them again).
            batch: the training batch (``labels`` for supervised methods).
            weights: quality mode's per-pair weights (B,), or None.
        """
        raise NotImplementedError

    def multipos_loss(self, outputs: list[Outputs], batch: PretrainBatch) -> torch.Tensor:
        """multipos mode: the loss over all views (2 real + P synthetic per image)."""
        raise NotImplementedError(f"{type(self).__name__} has no multi-positive loss")

    # --- shared machinery ------------------------------------------------------------------

    def view(self, images: torch.Tensor, no_crop: torch.Tensor | None = None, index: int = 0,
             synthetic: bool | torch.Tensor = False) -> torch.Tensor:
        """View ``index`` (0 = view 1: per-view augmentation settings) of ``images``; ``no_crop`` (B,) bool:
        where set, no RandomResizedCrop (the whole image). ``synthetic``: whether the images are stored
        candidates, all (True) or per row ((B,) bool); they take ``pretrain.synthetic.augment`` when it is set.
        Shape: (B, C, H, W) uint8 -> (B, C, crop, crop)."""
        if self.synthetic_augment is None or synthetic is False:
            out = self._augment(self.augment, images, no_crop, index)  # the path of every run without the setting
        elif synthetic is True:
            out = self._augment(self.synthetic_augment, images, no_crop, index)
        else:
            rows = synthetic.to(images.device, torch.bool)
            out = self._augment(self.augment, images, no_crop, index)
            if rows.any():
                out[rows] = self._augment(self.synthetic_augment, images[rows],
                                          None if no_crop is None else no_crop.to(images.device)[rows], index)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    @staticmethod
    def _augment(augment: nn.Module, images: torch.Tensor, no_crop: torch.Tensor | None, index: int) -> torch.Tensor:
        # Only an augmentation with per-view settings takes the view's index (others keep their plain signature).
        per_view = index and getattr(augment, "per_view", False)
        extra = ({} if no_crop is None else {"no_crop": no_crop}) | ({"view": index} if per_view else {})
        return augment(images, **extra)

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

    def compute_loss(self, batch: PretrainBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one batch and the values to log: the mode makes the views' sources and combines the loss."""
        views = self.mode.views(self, batch)
        return self.mode.loss(self, views, self.embed_views(views), batch)

    def training_step(self, batch: PretrainBatch, batch_idx: int) -> torch.Tensor:
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
