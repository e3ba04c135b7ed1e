"""The synthetic mode base: what a mode declares and the hooks it may override."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel

from synthpos.config import PretrainConfig, SyntheticConfig
from synthpos.data.batch import PretrainBatch
from synthpos.data.synthetic_store import SyntheticStore
from synthpos.distributed import gather, rank_offset
from synthpos.registry import METHODS, MODES

if TYPE_CHECKING:  # methods import modes, not the other way round
    from synthpos.methods.base import Outputs, SSLMethod
    from synthpos.modes.contrast import Term

register_mode = MODES.register


class SyntheticMode:
    """One way synthetic data enter pretraining (``pretrain.synthetic.mode``).

    Declares:
        name: set by ``@register_mode("name")``.
        needs_store: whether the mode reads generated candidates from a store; a mode that
            needs none (``none``, ``mochi``) makes ``run`` skip generator training and generation.
        synthetic: whether it adds anything synthetic at all (``none`` does not: the plain method).
        for_every_method: the mode works with any method (it needs only ``embed`` and
            ``objective``); otherwise it ``requires`` what a method declares in its ``contrasts``.
        requires: that declaration (the method's ``modes`` then lists this mode).
        needs: what a method must have for the mode, for the one-line config error.
        settings: a pydantic model of the mode's own settings, read from
            ``pretrain.synthetic.<name>``; None when it only reads the shared fields.

    The defaults make the plain two-view step: views from ``images`` (and ``second`` when
    set), the method's :meth:`~synthpos.methods.base.SSLMethod.objective` as it is, nothing else.
    A mode changes the method's loss only through what the method declares there (per-pair
    weights, negatives per query, a contrast with positives by id) or by adding a term of its own;
    a method never asks for its mode.
    """

    name: ClassVar[str]
    needs_store: ClassVar[bool] = True
    #: whether the mode adds anything synthetic to the method's own two-view loss (positives from a store,
    #: mixed hard negatives); False: the plain method (``none``), the baseline synthetic modes are compared with
    synthetic: ClassVar[bool] = True
    #: whether the mode reads a frozen scorer network (``pretrain.synthetic.scorer``)
    uses_scorer: ClassVar[bool] = False
    for_every_method: ClassVar[bool] = False
    needs: ClassVar[str] = "support for it"
    #: what a method must declare in its ``contrasts`` for this mode (``synthpos.modes.contrast``:
    #: ``PAIRS``, ``NEGATIVES``, ``POSITIVES``); None: the method names the mode in its ``modes``
    requires: ClassVar[str | None] = None
    settings: ClassVar[type[BaseModel] | None] = None
    #: :meth:`hard_negatives` returns negatives (:meth:`batch_hard_negatives` gathers what it needs only then)
    adds_negatives: ClassVar[bool] = False

    def __init__(self, config: SyntheticConfig) -> None:
        self.config = config
        self.options = config.section(self.name) if self.settings is not None else None

    # --- config time ------------------------------------------------------------------------

    @classmethod
    def check(cls, method: type, config: SyntheticConfig) -> None:
        """Raise ValueError (one line) when ``method`` cannot use this mode or ``config`` misses a setting."""
        if cls.for_every_method or cls.name in method.modes:
            return
        users = [name for name, m in METHODS.items() if cls.name in m.modes]
        raise ValueError(f"pretrain.synthetic.mode={cls.name} needs {cls.needs}; {method.name} has none. "
                         f"Use it with {', '.join(users) or 'no registered method'}, or choose mode clsp or replace")

    @classmethod
    def plain_on_anchors(cls, config: SyntheticConfig) -> bool:
        """Whether this mode with ``config``, on a store whose candidates are the anchors themselves
        (``generate.kind: anchors``), trains exactly as the plain method (every view an anchor augmented
        as a real one), so the plain method's run is its control; default: no."""
        return False

    @classmethod
    def check_candidates(cls, config: SyntheticConfig, candidates: int) -> None:
        """Raise ValueError (one line) when ``candidates`` per anchor (``generate.candidates``) are too few for
        ``config``; default: any number will do."""

    @classmethod
    def frozen_model(cls, config: PretrainConfig, dataset: Any, seed: int) -> torch.nn.Module | None:
        """A frozen network the mode needs at training time (quality's scorer), built once; default none."""
        return None

    # --- data side --------------------------------------------------------------------------

    def check_store(self, store: SyntheticStore) -> None:
        """Raise :class:`~synthpos.errors.SynthposError` when ``store`` cannot serve this mode."""

    def fill(self, batch: PretrainBatch, store: SyntheticStore, rng: np.random.Generator) -> None:
        """Add what the mode draws from ``store`` to ``batch`` (in place); default nothing."""

    # --- model side -------------------------------------------------------------------------

    def sources(self, batch: PretrainBatch) -> list[torch.Tensor]:
        """The uint8 images each view is made from, in view order (view 1, view 2, extra views)."""
        return [batch.images, batch.images if batch.second is None else batch.second]

    def views(self, method: SSLMethod, batch: PretrainBatch) -> list[torch.Tensor]:
        """The augmented views, in the order of :meth:`sources` (default: the method's augmentation of each)."""
        return [method.view(source, index=i, synthetic=self.synthetic_rows(batch, i))
                for i, source in enumerate(self.sources(batch))]

    def synthetic_rows(self, batch: PretrainBatch, view: int) -> bool | torch.Tensor:
        """Whether view ``view``'s sources are stored candidates (``pretrain.synthetic.augment`` applies to them):
        every view after the second (clsp's, multipos's extra views), and in views 1 and 2 the rows
        ``batch.replaced`` marks (replace, quality). A mode whose extra views are real overrides this.
        Shape: bool, or (B,) bool."""
        if view >= 2:
            return True
        return False if batch.replaced is None else batch.replaced[:, view]

    def loss(
        self, method: SSLMethod, views: list[torch.Tensor], outputs: list[Outputs], batch: PretrainBatch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The step's loss and the values to log (``loss`` among them)."""
        loss, logs = self.method_loss(method, views, outputs, batch)
        return loss, {**logs, "loss": loss}

    def method_loss(
        self, method: SSLMethod, views: list[torch.Tensor], outputs: list[Outputs], batch: PretrainBatch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The method's loss for views 1 and 2 as this mode transforms it (default: as the method declares it)."""
        return method.objective(outputs[:2], views[:2], batch).loss()

    def extra_negatives(self, term: Term) -> torch.Tensor | None:
        """Extra negatives for the queries of a method's ``term``: :meth:`hard_negatives` of a set every
        query meets (a queue), :meth:`batch_hard_negatives` of an in-batch contrast. Shape: (N, S, D) or None."""
        if term.negatives is not None:
            return self.hard_negatives(term.queries, term.negatives)
        if term.in_batch is not None:
            return self.batch_hard_negatives(term.queries, term.in_batch)
        return None

    def hard_negatives(
        self, query: torch.Tensor, negatives: torch.Tensor, exclude: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Extra negatives per query for a method's contrast, or None (default).

        For a method's term whose queries meet a set of negatives (:meth:`extra_negatives`; MoCHi
        adds mixes of the hardest). ``exclude[i]`` holds the rows of ``negatives`` that are never
        query i's negatives (its own positive, or itself, where the set holds them: in-batch
        keys); None when every row is a negative of every query (a queue).
        Shape: (N, D), (Q, D), (N,) or (N, E) -> (N, S, D).
        """
        return None

    def batch_hard_negatives(self, queries: torch.Tensor, views: list[torch.Tensor]) -> torch.Tensor | None:
        """:meth:`hard_negatives` for a contrast with the rest of the batch (no queue), or None.

        The negatives of an in-batch contrast: every row of every tensor in ``views``, gathered
        over all ranks, except the rows of the query's own image. Query row r belongs to image
        ``r % n`` of this rank's batch (n = ``len(views[0])``), so queries may stack several views
        (SimCLR's anchors are both). Gathers only when the mode adds negatives.
        Shape: (Vq * n, D), V x (n, D) -> (Vq * n, S, D).
        """
        if not self.adds_negatives:
            return None
        n = len(views[0])
        with torch.no_grad():
            gathered = [gather(v.detach()) for v in views]
        m = len(gathered[0])  # world_size * n
        own = torch.arange(len(queries), device=queries.device) % n + rank_offset(n)
        exclude = torch.stack([own + v * m for v in range(len(views))], dim=1)  # (Vq * n, V)
        return self.hard_negatives(queries, torch.cat(gathered), exclude)
