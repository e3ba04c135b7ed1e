"""SyntheticPositiveLoss and CLSPSimCLRLoss."""

from __future__ import annotations

import math

import pytest
import torch

from synthpos.losses import CLSPSimCLRLoss, NTXentLoss, SyntheticPositiveLoss


def _by_hand(a: torch.Tensor, b: torch.Tensor) -> float:
    total = 0.0
    for x, y in zip(a.tolist(), b.tolist()):
        dot = sum(p * q for p, q in zip(x, y))
        nx = math.sqrt(sum(p * p for p in x))
        ny = math.sqrt(sum(q * q for q in y))
        total += 2 - 2 * dot / (nx * ny)
    return total / len(a)


def test_matches_closed_form() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(10, 6, generator=g, dtype=torch.float64)
    b = torch.randn(10, 6, generator=g, dtype=torch.float64)
    assert SyntheticPositiveLoss()(a, b).item() == pytest.approx(_by_hand(a, b), abs=1e-12)


def test_identical_inputs_give_zero_and_opposite_give_four() -> None:
    a = torch.randn(7, 5)
    assert SyntheticPositiveLoss()(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert SyntheticPositiveLoss()(a, 2.5 * a).item() == pytest.approx(0.0, abs=1e-6)
    assert SyntheticPositiveLoss()(a, -a).item() == pytest.approx(4.0, abs=1e-6)


def test_gradient_pulls_real_view_towards_synthetic() -> None:
    z_real = torch.randn(4, 8, requires_grad=True)
    z_syn = torch.randn(4, 8)
    loss_fn = SyntheticPositiveLoss()
    before = loss_fn(z_real, z_syn)
    before.backward()
    with torch.no_grad():
        after = loss_fn(z_real - 0.1 * z_real.grad, z_syn)
    assert after < before


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0, 2.0])
def test_clsp_total_is_sum_of_parts(weight: float) -> None:
    g = torch.Generator().manual_seed(1)
    z1, z2, z3 = (torch.randn(12, 16, generator=g) for _ in range(3))
    loss_fn = CLSPSimCLRLoss(temperature=0.2, weight=weight)
    total, ntxent, synthetic = loss_fn(z1, z2, z3, return_parts=True)
    torch.testing.assert_close(total, ntxent + weight * synthetic)
    torch.testing.assert_close(ntxent, NTXentLoss(temperature=0.2)(z1, z2))
    torch.testing.assert_close(synthetic, SyntheticPositiveLoss()(z1, z3))
    torch.testing.assert_close(loss_fn(z1, z2, z3), total)


def test_synthetic_view_is_not_a_negative() -> None:
    # z3 only enters through the synthetic term: with weight 0, it has no gradient.
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8)
    z3 = torch.randn(6, 8, requires_grad=True)
    CLSPSimCLRLoss(weight=0.0)(z1, z2, z3).backward()
    assert z3.grad is None or torch.count_nonzero(z3.grad) == 0


def test_defaults() -> None:
    loss_fn = CLSPSimCLRLoss()
    assert loss_fn.ntxent.temperature == 0.2
    assert loss_fn.weight == 1.0
    assert loss_fn.ntxent.gather_distributed is False


@pytest.mark.parametrize(
    ("shape_real", "shape_syn"), [((4, 8), (4, 7)), ((4, 8), (3, 8)), ((8,), (8,)), ((0, 8), (0, 8))]
)
def test_synthetic_shape_errors(shape_real: tuple[int, ...], shape_syn: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="shape"):
        SyntheticPositiveLoss()(torch.randn(shape_real), torch.randn(shape_syn))


def test_clsp_shape_errors() -> None:
    ok = torch.randn(4, 8)
    with pytest.raises(ValueError, match="z3"):
        CLSPSimCLRLoss()(ok, ok, torch.randn(5, 8))
    with pytest.raises(ValueError, match="z2"):
        CLSPSimCLRLoss()(ok, torch.randn(4, 9), ok)


def test_clsp_bad_hyperparameters() -> None:
    with pytest.raises(ValueError, match="weight"):
        CLSPSimCLRLoss(weight=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        CLSPSimCLRLoss(temperature=0.0)
