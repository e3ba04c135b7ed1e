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
generator for it. Methods with a set of negatives per query pass it to
:meth:`~synthpos.modes.base.SyntheticMode.hard_negatives`: MoCo v2+ its queue, MoCo v3
the keys of the whole batch (of all ranks), the query's own key excluded.

Recipe: configs/fashion_mnist/mochi_mocov2plus.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from synthpos.modes.base import SyntheticMode, register_mode


class MoCHiSettings(BaseModel):
    """``pretrain.synthetic.mochi``: the paper's (N, s, s'); default its ImageNet setting (1024, 512, 256)."""

    model_config = ConfigDict(extra="forbid")

    hardest: int = Field(1024, ge=1, description="N: the hardest negatives of each query that are mixed "
                         "(at most the number of negatives, e.g. the queue size).")
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
    query: torch.Tensor, negatives: torch.Tensor, hardest: int, draws: MixingDraws, positives: torch.Tensor | None = None
) -> torch.Tensor:
    """MoCHi's synthetic negatives of each query, unit vectors without gradient.

    Args:
        query: queries (normalised here). Shape: (B, D).
        negatives: the negatives they share (normalised here). Shape: (Q, D).
        hardest: N; the ``hardest`` negatives most similar to each query are mixed (N <= Q).
        draws: which of them and how much of each (:func:`draw_mixing`).
        positives: row of ``negatives`` that is each query's own positive (in-batch keys, MoCo v3),
            never taken as a negative; None when the set holds none (a queue). Shape: (B,).

    Returns:
        ``[h_1..h_s, h'_1..h'_s']`` per query. Shape: (B, s + s', D).
    """
    q = F.normalize(query.detach().float(), dim=1)
    n = F.normalize(negatives.detach().float().to(q.device), dim=1)
    sims = q @ n.T  # (B, Q)
    if positives is not None:  # masked_fill, not a product: the positive must never rank among the hardest
        sims = sims.masked_fill(F.one_hot(positives.to(q.device), len(n)).bool(), float("-inf"))
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
    needs = "a set of negatives per query (a queue or the batch's keys)"
    settings = MoCHiSettings
    adds_negatives = True

    def hard_negatives(self, query, negatives, positives=None):
        o = self.options
        if o.mixes + o.query_mixes == 0:
            return None
        # Fewer negatives than N: every one of them is among the hardest.
        hardest = min(o.hardest, len(negatives) - (positives is not None))
        draws = draw_mixing(len(query), hardest, o.mixes, o.query_mixes, query.device)
        return mix_hard_negatives(query, negatives, hardest, draws, positives)
