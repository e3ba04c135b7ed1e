"""DCLLoss and DCLWLoss against lightly's reference implementation and a per-anchor loop."""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch

from synthpos.losses import DCLLoss, DCLWLoss, NTXentLoss

lightly_loss = pytest.importorskip("lightly.loss")

CASES = [(2, 4, 0.1), (8, 16, 0.1), (32, 128, 0.5), (17, 7, 0.2), (64, 32, 1.0)]


def _inputs(n: int, d: int, seed: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out0 = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_()
    out1 = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_()
    return out0, out1


def _assert_same_value_and_grads(
    ours_fn: Callable[..., torch.Tensor],
    ref_fn: Callable[..., torch.Tensor],
    out0: torch.Tensor,
    out1: torch.Tensor,
) -> None:
    ours = ours_fn(out0, out1)
    ours_grads = torch.autograd.grad(ours, [out0, out1])
    ref = ref_fn(out0, out1)
    ref_grads = torch.autograd.grad(ref, [out0, out1])
    assert ours.shape == ()
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    for g_ours, g_ref in zip(ours_grads, ref_grads):
        torch.testing.assert_close(g_ours, g_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("n", "d", "temperature"), CASES)
def test_dcl_equals_lightly(n: int, d: int, temperature: float) -> None:
    out0, out1 = _inputs(n, d, seed=n * 100 + d)
    _assert_same_value_and_grads(
        DCLLoss(temperature), lightly_loss.DCLLoss(temperature=temperature), out0, out1
    )


@pytest.mark.parametrize(("n", "d", "temperature"), CASES)
@pytest.mark.parametrize("sigma", [0.5, 0.1, 2.0])
@pytest.mark.filterwarnings("ignore:To copy construct")  # lightly's torch.tensor(tensor)
def test_dclw_equals_lightly(n: int, d: int, temperature: float, sigma: float) -> None:
    out0, out1 = _inputs(n, d, seed=n * 100 + d + 7)
    _assert_same_value_and_grads(
        DCLWLoss(temperature, sigma), lightly_loss.DCLWLoss(temperature=temperature, sigma=sigma), out0, out1
    )


def _dcl_by_hand(
    out0: torch.Tensor, out1: torch.Tensor, temperature: float, vmf_sigma: float | None
) -> list[float]:
    """Per-anchor DCL(W) losses in the order [anchors of out0, anchors of out1]."""
    z0 = torch.nn.functional.normalize(out0.detach().double(), dim=1).tolist()
    z1 = torch.nn.functional.normalize(out1.detach().double(), dim=1).tolist()
    n = len(z0)

    def dot(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b))

    if vmf_sigma is None:
        vmf = [1.0] * n
    else:
        e = [math.exp(dot(z0[i], z1[i]) / vmf_sigma) for i in range(n)]
        vmf = [2 - n * e_i / sum(e) for e_i in e]
    losses = []
    for a_view, b_view in ((z0, z1), (z1, z0)):
        for i in range(n):
            negatives = [dot(a_view[i], a_view[j]) / temperature for j in range(n) if j != i]
            negatives += [dot(a_view[i], b_view[j]) / temperature for j in range(n) if j != i]
            positive = dot(a_view[i], b_view[i]) / temperature
            losses.append(-vmf[i] * positive + math.log(sum(math.exp(s) for s in negatives)))
    return losses


@pytest.mark.parametrize("sigma", [None, 0.5])
def test_matches_per_anchor_loop(sigma: float | None) -> None:
    out0, out1 = _inputs(9, 6, seed=11, dtype=torch.float64)
    loss_fn = DCLLoss(0.3) if sigma is None else DCLWLoss(0.3, sigma)
    expected = sum(_dcl_by_hand(out0, out1, 0.3, sigma)) / 18
    assert loss_fn(out0, out1).item() == pytest.approx(expected, abs=1e-10)


def test_positive_is_not_in_the_denominator() -> None:
    # DCL = NT-Xent minus what the positive adds to the denominator: for any
    # anchor, logsumexp over negatives < logsumexp over negatives + positive.
    out0, out1 = _inputs(16, 8, seed=4)
    assert DCLLoss(0.5)(out0, out1) < NTXentLoss(0.5)(out0, out1)


def test_dclw_weights_have_no_gradient() -> None:
    # The vMF weights are detached: d/dz of the weighted positive only goes
    # through the similarity, so DCLW with a huge sigma (all weights -> 1) has
    # the gradient of DCL.
    out0, out1 = _inputs(8, 5, seed=5, dtype=torch.float64)
    g_w = torch.autograd.grad(DCLWLoss(0.2, sigma=1e9)(out0, out1), [out0, out1])
    g_plain = torch.autograd.grad(DCLLoss(0.2)(out0, out1), [out0, out1])
    for a, b in zip(g_w, g_plain):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


def test_defaults_match_lightly() -> None:
    assert DCLLoss().temperature == lightly_loss.DCLLoss().temperature == 0.1
    assert DCLWLoss().sigma == 0.5
    assert DCLLoss().gather_distributed is False


def test_gather_distributed_is_identity_without_process_group() -> None:
    out0, out1 = _inputs(8, 16, seed=1)
    torch.testing.assert_close(DCLLoss(0.3, gather_distributed=True)(out0, out1), DCLLoss(0.3)(out0, out1))
    torch.testing.assert_close(DCLWLoss(0.3, gather_distributed=True)(out0, out1), DCLWLoss(0.3)(out0, out1))


@pytest.mark.parametrize(
    ("shape0", "shape1"), [((4, 8), (4, 7)), ((4, 8), (5, 8)), ((4,), (4,)), ((0, 8), (0, 8))]
)
def test_shape_errors(shape0: tuple[int, ...], shape1: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="shape"):
        DCLLoss()(torch.randn(shape0), torch.randn(shape1))


def test_single_pair_has_no_negatives() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        DCLLoss()(torch.randn(1, 4), torch.randn(1, 4))


def test_bad_hyperparameters() -> None:
    with pytest.raises(ValueError, match="temperature"):
        DCLLoss(temperature=0.0)
    with pytest.raises(ValueError, match="sigma"):
        DCLWLoss(sigma=-1.0)
