"""``mochi``: synthetic hard negatives mixed in embedding space (Kalantidis et al., NeurIPS 2020).

MoCHi, "Hard Negative Mixing for Contrastive Learning": for each query ``q`` (unit
vector) take its ``N`` hardest negatives ``n_1..n_N``, the negatives most similar to
``q``, and add to its logits

- ``s`` mixes of two of them: ``h = normalise(a * n_i + (1 - a) * n_j)``, ``a ~ U(0, 1)``;
- ``s'`` harder mixes with the query itself: ``h' = normalise(b * q + (1 - b) * n_j)``,
  ``b ~ U(0, 0.5)``, so the negative's share always dominates;

``i`` and ``j`` drawn uniformly from the ``N`` hardest, anew for every query and step.
As in the paper, no gradient flows through the mixing (the mixes are built from detached
vectors); the query's gradient comes from its logits against them, as from any negative.
Nothing is generated before training, so the mode needs no store and ``run`` trains no
generator for it.

What the hardest negatives are follows from what each method declares in its objective (the
terms' ``queries`` and their ``negatives`` or ``in_batch``; :mod:`synthpos.modes.contrast`);
the mode adds its mixes to every such term (:meth:`MoCHi.method_loss`). It ``requires``
``NEGATIVES``, so it takes every method that declares them in its ``contrasts``. Per method:

- MoCo v2+: the query ``q1`` against the other view's queue (and ``q2`` against the first's):
  the N queue entries most similar to the query (:meth:`~synthpos.modes.base.SyntheticMode.hard_negatives`).
- In-batch contrasts (:meth:`~synthpos.modes.base.SyntheticMode.batch_hard_negatives`): the
  negatives are the rows the loss contrasts the query with, of all ranks, minus the query's
  own image; the hardest are the N of them most similar to the query.
  MoCo v3: ``p1`` against the momentum keys ``k2`` of the other images (and ``p2`` against ``k1``).
  SimCLR, DCL, DCLW: each of the 2n anchors ``z`` against both views of every other image
  (NT-Xent's and DCL's 2n - 2 negatives; the anchor itself and its positive never).
  All4One: its centroid contrast only, ``rich1`` against the ``shifted2`` of the other
  images (and ``rich2`` against ``shifted1``).

Not NNCLR, nor All4One's neighbour term: their rows are support-set neighbours, which carry
no gradient, so detached mixes in a row would move no parameter (they would only rescale
that row's softmax); see docs/architecture.md.

Recipes: configs/fashion_mnist/mochi_mocov2plus.yaml, mochi_simclr.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from synthpos.modes.contrast import NEGATIVES
from synthpos.modes.base import SyntheticMode, register_mode


class MoCHiSettings(BaseModel):
    """``pretrain.synthetic.mochi``: the paper's (N, s, s'); default its ImageNet setting (1024, 512, 256)."""

    model_config = ConfigDict(extra="forbid")

    hardest: int = Field(1024, ge=1, description="N: the hardest negatives of each query that are mixed "
                         "(capped at the number of its negatives: the queue size, or the batch's other rows).")
    mixes: int = Field(512, ge=0, description="s: synthetic negatives per query mixed from pairs of the N hardest.")
    query_mixes: int = Field(256, ge=0, description="s': synthetic negatives per query mixed from the query and one "
                             "of the N hardest, the query's share below 0.5.")


@dataclass
class MixingDraws:
    """The random part of one step's mixing; shapes (B, s) or (B, s'), indices into the N hardest."""

    first: torch.Tensor  # (B, s) i
    second: torch.Tensor  # (B, s) j
    alpha: torch.Tensor  # (B, s) in (0, 1)
    partner: torch.Tensor  # (B, s') j of the query mixes
    beta: torch.Tensor  # (B, s') in (0, 0.5)


def draw_mixing(batch: int, hardest: int, mixes: int, query_mixes: int, device: torch.device | str = "cpu",
                generator: torch.Generator | None = None) -> MixingDraws:
    """Uniform picks among the ``hardest`` and mixing shares: ``alpha ~ U(0, 1)``, ``beta ~ U(0, 0.5)``."""
    def pick(k: int) -> torch.Tensor:
        return torch.randint(0, hardest, (batch, k), device=device, generator=generator)

    first, second, partner = pick(mixes), pick(mixes), pick(query_mixes)
    alpha = torch.rand(batch, mixes, device=device, generator=generator)
    beta = 0.5 * torch.rand(batch, query_mixes, device=device, generator=generator)
    return MixingDraws(first, second, alpha, partner, beta)


@torch.no_grad()
def mix_hard_negatives(
    query: torch.Tensor, negatives: torch.Tensor, hardest: int, draws: MixingDraws, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """MoCHi's synthetic negatives of each query, unit vectors without gradient.

    Args:
        query: queries (normalised here). Shape: (B, D).
        negatives: the negatives they share (normalised here). Shape: (Q, D).
        hardest: N; the ``hardest`` negatives most similar to each query are mixed (N <= Q - E).
        draws: which of them and how much of each (:func:`draw_mixing`).
        exclude: rows of ``negatives`` that are never query i's negatives (its own positive and
            itself, in-batch), or None when every row is one (a queue). Shape: (B,) or (B, E).

    Returns:
        ``[h_1..h_s, h'_1..h'_s']`` per query. Shape: (B, s + s', D).
    """
    q = F.normalize(query.detach().float(), dim=1)
    n = F.normalize(negatives.detach().float().to(q.device), dim=1)
    sims = q @ n.T  # (B, Q)
    if exclude is not None:  # masked_fill, not a product: an excluded row must never rank among the hardest
        exclude = exclude.to(q.device).view(len(q), -1)
        sims = sims.masked_fill(torch.zeros_like(sims, dtype=torch.bool).scatter_(1, exclude, True), float("-inf"))
    order = sims.topk(hardest, dim=1).indices  # (B, N): most similar first
    hard = n[order]  # (B, N, D)

    def take(index: torch.Tensor) -> torch.Tensor:  # (B, k) indices into the N hardest -> (B, k, D)
        return torch.gather(hard, 1, index.unsqueeze(-1).expand(-1, -1, hard.shape[-1]))

    a = draws.alpha.unsqueeze(-1)
    mixed = a * take(draws.first) + (1 - a) * take(draws.second)  # (B, s, D)
    b = draws.beta.unsqueeze(-1)
    with_query = b * q.unsqueeze(1) + (1 - b) * take(draws.partner)  # (B, s', D)
    return F.normalize(torch.cat([mixed, with_query], dim=1), dim=2).to(query.dtype)


@register_mode("mochi")
class MoCHi(SyntheticMode):
    """Hard negatives mixed from the hardest negatives of each query (and the query); see the module docstring."""

    needs_store = False
    needs = "a contrast of each query with a set of negatives (a queue or the rest of the batch)"
    requires = NEGATIVES
    settings = MoCHiSettings
    adds_negatives = True

    def method_loss(self, method, views, outputs, batch):
        return method.objective(outputs[:2], views[:2], batch).loss(negatives=self.extra_negatives)

    def hard_negatives(self, query, negatives, exclude=None):
        o = self.options
        excluded = 0 if exclude is None else exclude.view(len(query), -1).shape[1]
        # Fewer negatives than N: every one of them is among the hardest.
        hardest = min(o.hardest, len(negatives) - excluded)
        if o.mixes + o.query_mixes == 0 or hardest < 1:
            return None
        draws = draw_mixing(len(query), hardest, o.mixes, o.query_mixes, query.device)
        return mix_hard_negatives(query, negatives, hardest, draws, exclude)
