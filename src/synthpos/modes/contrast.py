"""What a method's loss contrasts, declared so that a synthetic mode can transform it without the method knowing it.

For views 1 and 2 a method returns an :class:`Objective`: its loss as :class:`Term` s, each a part
of the loss computed from optional per-pair ``weights`` and per-query ``extra_negatives``, and
declaring which of the two it takes:

- ``weighted``: the term is a mean over positive pairs, so per-pair weights apply (GenView's
  quality weights: SimCLR, DCL, MoCo, BYOL, SimSiam, NNCLR);
- ``queries`` with the negatives they meet: a set every query shares (``negatives``: MoCo v2+'s
  queue) or the batch (``in_batch``: the views whose rows of the *other* images are the negatives:
  SimCLR, DCL, MoCo v3, All4One's centroid contrast), so a mode may add negatives per query (MoCHi);
- neither: a loss a mode can only add a term to (Barlow Twins, VICReg, SupCon, All4One's other terms).

A method with a contrast of any number of positives per row declares it as :class:`MultiPositive`
(:meth:`~synthpos.methods.base.SSLMethod.positives`): the multipos mode feeds it every view.
The same is declared on the class (``SSLMethod.contrasts``: :data:`PAIRS`, :data:`NEGATIVES`,
:data:`POSITIVES`), so that a config is checked without building a method: a mode ``requires`` one.

This is the whole contract between methods and modes: a method never calls its mode, and a mode
reads of a method only this, its ``embed`` outputs and its ``view``. It lives here, below both
(methods import modes, never the reverse).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from synthpos.errors import SynthposError

Tensor = torch.Tensor

#: What a method's objective may declare about itself (``SSLMethod.contrasts``), and what a mode may
#: require of it (``SyntheticMode.requires``), known from the class when a config is read:
#: every term of the objective is a mean over positive pairs (takes per-pair weights)
PAIRS = "pairs"
#: some terms have queries that meet negatives (a mode may add negatives)
NEGATIVES = "negatives"
#: the method has a contrast with positives by id (``SSLMethod.positives``)
POSITIVES = "positives"


@dataclass
class Term:
    """One part of a method's loss.

    Attributes:
        value: ``(weights, extra_negatives) -> ()``; ``weights`` (B,) or None, ``extra_negatives``
            (N, S, D) per query or None.
        weighted: ``value`` takes per-pair weights (the term is a mean over positive pairs).
        queries: the rows that meet negatives, when a mode may add to them. Shape: (N, D).
        negatives: the negatives every query meets (a queue). Shape: (Q, D).
        in_batch: for an in-batch contrast, the views whose rows are the negatives (all ranks', but
            those of the query's own image); query row r belongs to image ``r % n``. V x (n, D).
    """

    value: Callable[[Tensor | None, Tensor | None], Tensor]
    weighted: bool = False
    queries: Tensor | None = None
    negatives: Tensor | None = None
    in_batch: list[Tensor] | None = None


def _sum(values: list[Tensor]) -> Tensor:
    total = values[0]
    for value in values[1:]:
        total = total + value
    return total


@dataclass
class Objective:
    """A method's loss for views 1 and 2, as terms; :meth:`loss` computes it.

    Attributes:
        terms: the parts a mode may transform.
        name: the key the loss is logged under (``ntxent``, ``moco``, ...).
        combine: the terms' values -> the loss (default their sum).
        logs: more values to log, or a function of the terms' values that gives them (All4One's parts).
    """

    terms: list[Term]
    name: str
    combine: Callable[[list[Tensor]], Tensor] = _sum
    logs: Callable[[list[Tensor]], dict[str, Tensor]] | None = None

    @property
    def weighted(self) -> bool:
        """Every term is a mean over positive pairs: per-pair weights apply to the whole loss."""
        return all(term.weighted for term in self.terms)

    def loss(
        self, weights: Tensor | None = None, negatives: Callable[[Term], Tensor | None] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss and the values to log.

        Args:
            weights: per-pair weights for every term (B,), or None.
            negatives: extra negatives of a term's queries (called for each term that has queries,
                all before the first term is computed), or None.

        Raises:
            SynthposError: weights for a loss that is not a mean over positive pairs.
        """
        if weights is not None and not self.weighted:
            raise SynthposError(f"{self.name} has no per-pair loss to weight; use pretrain.synthetic.mode clsp or replace")
        extra = [None if negatives is None or term.queries is None else negatives(term) for term in self.terms]
        values = [term.value(weights if term.weighted else None, e) for term, e in zip(self.terms, extra)]
        loss = self.combine(values)
        return loss, {self.name: loss, **(self.logs(values) if self.logs is not None else {})}


@dataclass
class MultiPositive:
    """A method's contrast with any number of positives per row: rows of one id are each other's positives.

    Attributes:
        key: the embedding it contrasts (a key of the method's ``embed`` output).
        criterion: ``(z (M, D), ids (M,)) -> ()``.
        by_label: the ids are class labels (SupCon), not the image's index.
    """

    key: str
    criterion: nn.Module
    by_label: bool = False

    def loss(self, embeddings: list[Tensor], indices: Tensor, labels: Tensor | None) -> Tensor:
        """The contrast over all views, each of shape (B, D); view v of image i has id ``indices[i]`` (or its label)."""
        ids = labels if self.by_label else indices
        return self.criterion(torch.cat(embeddings), ids.repeat(len(embeddings)))


__all__ = ["NEGATIVES", "PAIRS", "POSITIVES", "MultiPositive", "Objective", "Term"]
