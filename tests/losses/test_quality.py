"""GenView's quality weights and the per-pair ``weights`` of every loss that takes them."""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from synthpos.losses import (
    DCLLoss,
    DCLWLoss,
    MoCoLoss,
    NegativeCosineSimilarity,
    NTXentLoss,
    quality_weights,
)

N, D = 7, 5


def _pair(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out0 = torch.randn(N, D, generator=g, dtype=torch.float64, requires_grad=True)
    out1 = torch.randn(N, D, generator=g, dtype=torch.float64, requires_grad=True)
    weights = quality_weights(torch.randn(N, generator=g, dtype=torch.float64), gamma=2.0)
    return out0, out1, weights


def _unit(x: torch.Tensor) -> list[list[float]]:
    return F.normalize(x.detach(), dim=1).tolist()


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _lse(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _ntxent_rows(out0: torch.Tensor, out1: torch.Tensor, t: float) -> list[float]:
    z = _unit(out0) + _unit(out1)
    rows = []
    for a in range(2 * N):
        positive = (a + N) % (2 * N)
        logits = [_dot(z[a], z[j]) / t for j in range(2 * N) if j != a]
        rows.append(-_dot(z[a], z[positive]) / t + _lse(logits))
    return rows


def _dcl_rows(out0: torch.Tensor, out1: torch.Tensor, t: float, sigma: float | None) -> list[float]:
    z0, z1 = _unit(out0), _unit(out1)
    if sigma is None:
        vmf = [1.0] * N
    else:
        e = [math.exp(_dot(z0[i], z1[i]) / sigma) for i in range(N)]
        vmf = [2 - N * x / sum(e) for x in e]
    rows = []
    for a_view, b_view in ((z0, z1), (z1, z0)):
        for i in range(N):
            negatives = [_dot(a_view[i], v[j]) / t for v in (a_view, b_view) for j in range(N) if j != i]
            rows.append(-vmf[i] * _dot(a_view[i], b_view[i]) / t + _lse(negatives))
    return rows


def _moco_rows(out0: torch.Tensor, out1: torch.Tensor, queue: torch.Tensor, t: float) -> list[float]:
    q, k, neg = _unit(out0), _unit(out1), _unit(queue)
    return [
        -_dot(q[i], k[i]) / t + _lse([_dot(q[i], k[i]) / t] + [_dot(q[i], x) / t for x in neg]) for i in range(N)
    ]


def _negcos_rows(out0: torch.Tensor, out1: torch.Tensor) -> list[float]:
    return [-_dot(a, b) for a, b in zip(_unit(out0), _unit(out1))]


QUEUE = torch.randn(13, D, dtype=torch.float64, generator=torch.Generator().manual_seed(99))

# name -> (loss(out0, out1, weights), per-anchor reference rows, anchors per pair)
LOSSES: dict[str, tuple[Callable[..., torch.Tensor], Callable[[torch.Tensor, torch.Tensor], list[float]], int]] = {
    "ntxent": (lambda a, b, w: NTXentLoss(0.3)(a, b, weights=w), lambda a, b: _ntxent_rows(a, b, 0.3), 2),
    "dcl": (lambda a, b, w: DCLLoss(0.3)(a, b, weights=w), lambda a, b: _dcl_rows(a, b, 0.3, None), 2),
    "dclw": (lambda a, b, w: DCLWLoss(0.3, 0.5)(a, b, weights=w), lambda a, b: _dcl_rows(a, b, 0.3, 0.5), 2),
    "moco": (
        lambda a, b, w: MoCoLoss(0.2)(a, b, QUEUE, weights=w),
        lambda a, b: _moco_rows(a, b, QUEUE, 0.2),
        1,
    ),
    "negcos": (lambda a, b, w: NegativeCosineSimilarity()(a, b, weights=w), _negcos_rows, 1),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_ones_equal_unweighted(name: str) -> None:
    loss_fn, _, _ = LOSSES[name]
    out0, out1, _ = _pair(seed=1)
    weighted = loss_fn(out0, out1, torch.ones(N, dtype=torch.float64))
    plain = loss_fn(out0, out1, None)
    torch.testing.assert_close(weighted, plain, atol=1e-12, rtol=1e-12)
    for a, b in zip(torch.autograd.grad(weighted, [out0, out1]), torch.autograd.grad(plain, [out0, out1])):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_weighted_value_matches_per_row_loop(name: str) -> None:
    loss_fn, rows_fn, anchors_per_pair = LOSSES[name]
    out0, out1, weights = _pair(seed=2)
    rows = rows_fn(out0, out1)
    assert len(rows) == anchors_per_pair * N
    pair_weights = weights.tolist() * anchors_per_pair  # anchors i and N + i share pair i's weight
    expected = sum(w * r for w, r in zip(pair_weights, rows)) / len(rows)
    assert loss_fn(out0, out1, weights).item() == pytest.approx(expected, abs=1e-10)
    # And the unweighted loss is the plain mean of the same rows.
    assert loss_fn(out0, out1, None).item() == pytest.approx(sum(rows) / len(rows), abs=1e-10)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_weights_get_no_gradient(name: str) -> None:
    loss_fn, _, _ = LOSSES[name]
    out0, out1, _ = _pair(seed=3)
    weights = torch.rand(N, dtype=torch.float64, requires_grad=True)
    loss_fn(out0, out1, weights).backward()
    assert weights.grad is None


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_weight_shape_errors(name: str) -> None:
    loss_fn, _, _ = LOSSES[name]
    out0, out1, _ = _pair(seed=4)
    with pytest.raises(ValueError, match="weights"):
        loss_fn(out0, out1, torch.ones(N + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="weights"):
        loss_fn(out0, out1, torch.ones(N, 1, dtype=torch.float64))


def test_quality_weights_closed_form() -> None:
    scores = torch.tensor([0.3, -1.0, 2.0, 0.0], requires_grad=True)
    gamma = 1.5
    w = quality_weights(scores, gamma)
    e = [math.exp(gamma * s) for s in scores.tolist()]
    assert w.tolist() == pytest.approx([4 * x / sum(e) for x in e], rel=1e-6)
    assert w.sum().item() == pytest.approx(4.0, rel=1e-6)
    assert not w.requires_grad
    assert quality_weights(scores, 0.0).tolist() == pytest.approx([1.0] * 4)


def test_quality_weights_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        quality_weights(torch.randn(3, 2), 1.0)
    with pytest.raises(ValueError, match="shape"):
        quality_weights(torch.randn(0), 1.0)
    with pytest.raises(ValueError, match="floating"):
        quality_weights(torch.arange(3), 1.0)
