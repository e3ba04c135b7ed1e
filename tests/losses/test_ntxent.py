"""NTXentLoss against lightly's reference implementation."""

from __future__ import annotations

import pytest
import torch

from synthpos.losses import NTXentLoss

lightly_loss = pytest.importorskip("lightly.loss")

CASES = [(1, 3, 0.5), (2, 4, 0.5), (8, 16, 0.5), (32, 128, 0.1), (17, 7, 0.2), (64, 32, 1.0)]


def _inputs(n: int, d: int, seed: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out0 = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_()
    out1 = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_()
    return out0, out1


@pytest.mark.parametrize(("n", "d", "temperature"), CASES)
def test_value_and_gradients_equal_lightly(n: int, d: int, temperature: float) -> None:
    out0, out1 = _inputs(n, d, seed=n * 1000 + d)
    ours = NTXentLoss(temperature=temperature)(out0, out1)
    ours_grads = torch.autograd.grad(ours, [out0, out1])
    ref = lightly_loss.NTXentLoss(temperature=temperature, memory_bank_size=0)(out0, out1)
    ref_grads = torch.autograd.grad(ref, [out0, out1])

    assert ours.shape == ()
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    for g_ours, g_ref in zip(ours_grads, ref_grads):
        torch.testing.assert_close(g_ours, g_ref, atol=1e-5, rtol=1e-5)


def test_matches_lightly_in_float64_and_with_correlated_views() -> None:
    # Correlated views give a low loss: a stricter check than random pairs.
    out0, _ = _inputs(16, 32, seed=3, dtype=torch.float64)
    out1 = (out0.detach() + 0.1 * torch.randn(16, 32, dtype=torch.float64)).requires_grad_()
    ours = NTXentLoss(temperature=0.1)(out0, out1)
    ref = lightly_loss.NTXentLoss(temperature=0.1, memory_bank_size=0)(out0, out1)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)
    assert ours.item() < 1.0


def test_default_temperature_matches_lightly_default() -> None:
    out0, out1 = _inputs(8, 8, seed=0)
    assert NTXentLoss().temperature == 0.5
    torch.testing.assert_close(
        NTXentLoss()(out0, out1), lightly_loss.NTXentLoss(memory_bank_size=0)(out0, out1)
    )


def test_gather_distributed_is_identity_without_process_group() -> None:
    out0, out1 = _inputs(8, 16, seed=1)
    torch.testing.assert_close(
        NTXentLoss(0.3, gather_distributed=True)(out0, out1), NTXentLoss(0.3)(out0, out1)
    )


def test_scale_invariant() -> None:
    out0, out1 = _inputs(8, 16, seed=2)
    loss = NTXentLoss(0.5)
    torch.testing.assert_close(loss(out0, out1), loss(3.0 * out0, 0.5 * out1))


@pytest.mark.parametrize(
    ("shape0", "shape1"),
    [((4, 8), (4, 7)), ((4, 8), (5, 8)), ((4,), (4,)), ((2, 4, 8), (2, 4, 8)), ((0, 8), (0, 8))],
)
def test_shape_errors(shape0: tuple[int, ...], shape1: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="shape"):
        NTXentLoss()(torch.randn(shape0), torch.randn(shape1))


@pytest.mark.parametrize("temperature", [0.0, -0.5, float("nan")])
def test_bad_temperature(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature=temperature)
