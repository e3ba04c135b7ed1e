"""The thin base every joint-embedding method builds on.

It owns what all methods share and nothing else: the backbone, the batched view
augmentation, the synthetic mode of the run (:mod:`synthpos.modes`, which makes the
views' sources and combines the loss), and the optimiser with its warm-up + cosine
schedule. Probes and kNN monitors are callbacks (synthpos.evaluation.monitor), not part
of this class.

A method is one class registered by name, which declares and defines only what is its own::

    @register_method("simclr")
    class SimCLR(SSLMethod):
        contrasts = frozenset({PAIRS, NEGATIVES, POSITIVES})  # what its objective declares: the modes follow
        settings = None                      # or a pydantic model: the section pretrain.simclr

        def build_heads(self) -> None: ...   # reads self.shared (SharedSettings), self.options
        def embed(self, x): ...
        def objective(self, outputs, views, batch): ...   # what the loss contrasts (modes.contrast)

A method is built from plain arguments: the shared hyper-parameters (:class:`SharedSettings`), its
own settings, its mode, the optimiser's settings. The ``pretrain`` config section is read into
those in one place, :func:`method_arguments`; ``cls(backbone, augment, config, scorer)`` (what the
stage and older code call) goes through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel
from torch import nn

from synthpos.config import OptimizerConfig, PretrainConfig, SyntheticConfig
from synthpos.data.augment import BatchAugment
from synthpos.data.batch import PretrainBatch
from synthpos.modes.contrast import MultiPositive, Objective, Term
from synthpos.registry import METHODS, MODES

if TYPE_CHECKING:
    from synthpos.modes.base import SyntheticMode

Outputs = dict[str, torch.Tensor]

register_method = METHODS.register


@dataclass(frozen=True)
class SharedSettings:
    """Hyper-parameters that several methods share (``pretrain.<field>``); each method reads those it has.

    Attributes:
        projector_hidden_dim, projector_out_dim: the projector's widths.
        predictor_hidden_dim: BYOL, SimSiam, MoCo v3, NNCLR, All4One's predictor width.
        temperature: the contrastive methods' softmax temperature.
        queue_size: MoCo v2+'s negatives per view; NNCLR's and All4One's support set.
        momentum_base, momentum_final: the momentum encoder's cosine schedule (MoCo, BYOL, All4One).
    """

    projector_hidden_dim: int
    projector_out_dim: int
    predictor_hidden_dim: int
    temperature: float
    queue_size: int
    momentum_base: float
    momentum_final: float

    @classmethod
    def from_config(cls, config: PretrainConfig) -> SharedSettings:
        return cls(config.projector_hidden_dim, config.projector_out_dim, config.predictor_hidden_dim,
                   config.temperature, config.queue_size, config.momentum.base, config.momentum.final)


def method_arguments(config: PretrainConfig, augment: BatchAugment, method: type | None = None) -> dict[str, Any]:
    """The plain arguments of ``method`` (default: the class ``config.method`` names), read from the
    ``pretrain`` section: the one place a method's inputs are read from the config."""
    method = method or METHODS.get(config.method)
    synthetic = config.synthetic
    return {
        "shared": SharedSettings.from_config(config),
        "options": config.section(method.name) if method.settings is not None else None,
        "mode": MODES.get(synthetic.mode)(synthetic),
        # pretrain.synthetic.augment: views made from stored candidates get their own pipeline (the data's
        # normalisation); None: the same one as real views.
        "synthetic_augment": None if synthetic.augment is None else BatchAugment.from_settings(
            synthetic.augment, augment.mean, augment.std),
        "optimizer": config.optimizer,
        "channels_last": config.channels_last,
        "per_view_batchnorm": config.per_view_batchnorm,
    }


class _ModesByContrast:
    """``SSLMethod.modes``: the modes beyond those for every method that take this method, found from what
    the method declares (``contrasts``) and what each mode requires (``requires``), so that no method
    lists a mode by name. A method may still set ``modes`` to a tuple of names (a plugin mode that
    requires nothing the method declares)."""

    def __get__(self, method: SSLMethod | None, owner: type[SSLMethod]) -> tuple[str, ...]:
        return tuple(name for name, mode in MODES.items()
                     if not mode.for_every_method and mode.requires is not None and mode.requires in owner.contrasts)


class SSLMethod(nn.Module):
    """Backbone + augmentation + the run's synthetic mode; subclasses define heads and loss.

    A training batch is a :class:`~synthpos.data.batch.PretrainBatch`; views are made here,
    on the training device, from the sources the mode names. A plain ``nn.Module`` (no
    Lightning import, so the config can read every method cheaply);
    :func:`synthpos.methods.training.lightning_class` makes it trainable by Lightning's Trainer.

    Declares (class attributes):
        name: set by ``@register_method("name")``.
        contrasts: what its :meth:`objective` declares (:data:`~synthpos.modes.contrast.PAIRS`,
            ``NEGATIVES``, ``POSITIVES``); a mode that requires one of them takes the method.
        modes: the synthetic modes the method supports beyond those that work with every
            method (clsp, replace, none): by default found from ``contrasts``.
        settings: pydantic model of the method's own section ``pretrain.<name>``, or None.
        synthetic_key: key of :meth:`embed`'s output that the CLSP term pulls together.
        needs_labels: whether the method uses class labels (supervised).

    Args:
        backbone: encoder with a ``feature_dim`` attribute; (B, C, H, W) -> (B, D).
        augment: the view augmentation (applied to whole uint8 batches).
        config: a validated ``pretrain`` section to read the arguments below from
            (:func:`method_arguments`), kept as :attr:`config` for the record; or None.
        scorer: quality mode's frozen pair scorer (:class:`synthpos.models.scorer.QualityScorer`).
        shared: the shared hyper-parameters; when given, the arguments below are the method's
            inputs and ``config`` must be None.
        options: the method's own settings (an instance of :attr:`settings`; default its defaults).
        mode: the synthetic mode (default ``none``).
        synthetic_augment: the augmentation of views made from stored candidates (default: ``augment``).
        optimizer: the optimiser's settings (read by the training steps; default its defaults).
        channels_last: run the backbone in channels-last memory format.
        per_view_batchnorm: forward each view alone.
        **overrides: ``PretrainConfig`` fields, when neither ``config`` nor ``shared`` is given (tests,
            notebooks): read as ``PretrainConfig(method=name, **overrides)``.
    """

    name: ClassVar[str]
    contrasts: ClassVar[frozenset[str]] = frozenset()
    modes: ClassVar[tuple[str, ...]] = _ModesByContrast()  # type: ignore[assignment]
    settings: ClassVar[type[BaseModel] | None] = None
    synthetic_key: ClassVar[str] = "z"
    needs_labels: ClassVar[bool] = False
    #: forward each view alone (BatchNorm statistics per view, as the official MoCo code)
    per_view_batchnorm: bool = False

    def __init__(
        self, backbone: nn.Module, augment: BatchAugment, config: PretrainConfig | None = None,
        scorer: nn.Module | None = None, *, shared: SharedSettings | None = None, options: BaseModel | None = None,
        mode: SyntheticMode | None = None, synthetic_augment: nn.Module | None = None,
        optimizer: OptimizerConfig | None = None, channels_last: bool = True, per_view_batchnorm: bool = False,
        **overrides: Any,
    ) -> None:
        super().__init__()
        if config is not None and not isinstance(config, PretrainConfig):
            raise TypeError(f"{type(self).__name__}: config must be a PretrainConfig, got {type(config).__name__} "
                            "(pass settings such as optimizer=... as keywords)")
        if shared is None:
            if config is None:
                if overrides.get("synthetic") is None:
                    overrides.pop("synthetic", None)  # None: no synthetic data, the default
                plain = {"optimizer": optimizer, "channels_last": channels_last, "per_view_batchnorm": per_view_batchnorm}
                config = PretrainConfig(method=self.name, **{k: v for k, v in plain.items() if v is not None}, **overrides)
            elif overrides:
                raise TypeError(f"{type(self).__name__}: pass a config or its fields ({', '.join(overrides)}), not both")
            args = method_arguments(config, augment, type(self))
            shared, options, mode, synthetic_augment = args["shared"], args["options"], args["mode"], args["synthetic_augment"]
            optimizer, channels_last, per_view_batchnorm = args["optimizer"], args["channels_last"], args["per_view_batchnorm"]
        elif config is not None or overrides:
            raise TypeError(f"{type(self).__name__}: pass plain arguments (shared=...) or a config, not both")
        #: the ``pretrain`` section this method was read from, for the record (None when built from plain
        #: arguments); the methods themselves read only the arguments below
        self.config = config
        self.shared = shared
        self.options = options if options is not None or self.settings is None else self.settings()
        self.backbone = backbone
        self.augment = augment
        # No parameters, so the state_dict is the same with or without it.
        self.synthetic_augment = synthetic_augment
        self.optimizer_config = optimizer if optimizer is not None else OptimizerConfig()
        self.channels_last = channels_last
        self.per_view_batchnorm = per_view_batchnorm
        self.mode = mode if mode is not None else MODES.get(SyntheticConfig().mode)(SyntheticConfig())
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
        """Create the method's heads (and memories) from ``self.shared`` / ``self.options``."""

    def setup_losses(self) -> None:
        """Create the loss modules (called again in :meth:`setup`, once the world size is known)."""

    def static_lr_parameters(self) -> list[nn.Parameter]:
        """Parameters whose lr stays at ``optimizer.lr`` (no warm-up, no cosine); default none (SimSiam's predictor)."""
        return []

    def embed(self, x: torch.Tensor) -> Outputs:
        """Online outputs (e.g. ``{"z": projection, "p": prediction}``) of a batch of views. Shape: (B, ...)."""
        raise NotImplementedError

    def objective(self, outputs: list[Outputs], views: list[torch.Tensor], batch: PretrainBatch) -> Objective:
        """What the method's loss for views 1 and 2 of each image contrasts (:mod:`synthpos.modes.contrast`):
        its terms, which of them take per-pair weights, which queries meet which negatives. The run's
        mode computes it, transformed as the mode does (weights, extra negatives); the method never
        asks for the mode.

        Args:
            outputs: :meth:`embed` of view 1 and view 2.
            views: the two augmented views (momentum methods encode them again).
            batch: the training batch (``labels`` for supervised methods).
        """
        if type(self).pair_loss is SSLMethod.pair_loss:
            raise NotImplementedError(f"{type(self).__name__} defines no objective")
        # A method written before objective(): its pair_loss, which took the weights, is one weighted term.
        logs: dict[str, torch.Tensor] = {}

        def value(weights: torch.Tensor | None, extra: torch.Tensor | None) -> torch.Tensor:
            loss, more = self.pair_loss(outputs, views, batch, weights)
            logs.update(more)
            return loss

        return Objective([Term(value, weighted=True)], self.name, logs=lambda values: logs)

    def positives(self) -> MultiPositive | None:
        """The method's contrast with any number of positives per row (every view of an image, or of a
        class), when it has one; the multipos mode feeds it all views. Default none."""
        return None

    def pair_loss(
        self, outputs: list[Outputs], views: list[torch.Tensor], batch: PretrainBatch, weights: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The method's loss for views 1 and 2 with per-pair ``weights`` (B,) or None, and the values to log:
        :meth:`objective` computed. Kept for modes and methods written before it (a method may still
        define this instead of :meth:`objective`)."""
        return self.objective(outputs, views, batch).loss(weights)

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    @property
    def total_steps(self) -> int:
        """Optimiser steps of the whole run (for momentum schedules); needs ``self.trainer``."""
        return max(1, int(self.trainer.estimated_stepping_batches))

    @property
    def global_step(self) -> int:
        """Optimiser steps taken so far: the trainer's (Lightning's, or any object with ``global_step``
        set as ``self.trainer``); 0 when there is none."""
        try:
            trainer = self.trainer
        except (AttributeError, RuntimeError):  # a plain module without one; Lightning's when not attached
            return 0
        return 0 if trainer is None else int(trainer.global_step)
