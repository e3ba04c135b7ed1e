"""BarlowTwinsLoss against lightly's reference implementation and a closed form."""

from __future__ import annotations

import pytest
import torch

from synthpos.losses import BarlowTwinsLoss

lightly_loss = pytest.importorskip("lightly.loss")

CASES = [(2, 3, 5e-3), (8, 16, 5e-3), (32, 128, 5e-3), (17, 7, 0.1), (64, 32, 1.0), (5, 40, 0.0)]


def _inputs(n: int, d: int, seed: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z_a = (3 * torch.randn(n, d, generator=g, dtype=dtype) + 1).requires_grad_()
    z_b = (0.5 * torch.randn(n, d, generator=g, dtype=dtype) - 2).requires_grad_()
    return z_a, z_b


@pytest.mark.parametrize(("n", "d", "lambda_param"), CASES)
def test_value_and_gradients_equal_lightly(n: int, d: int, lambda_param: float) -> None:
    z_a, z_b = _inputs(n, d, seed=n * 100 + d)
    ours = BarlowTwinsLoss(lambda_param)(z_a, z_b)
    ours_grads = torch.autograd.grad(ours, [z_a, z_b])
    ref = lightly_loss.BarlowTwinsLoss(lambda_param=lambda_param)(z_a, z_b)
    ref_grads = torch.autograd.grad(ref, [z_a, z_b])
    assert ours.shape == ()
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-5)
    for g_ours, g_ref in zip(ours_grads, ref_grads):
        torch.testing.assert_close(g_ours, g_ref, atol=1e-5, rtol=1e-4)


def test_matches_double_loop() -> None:
    n, d, lam = 6, 4, 0.3
    z_a, z_b = _inputs(n, d, seed=1, dtype=torch.float64)
    a, b = z_a.detach().tolist(), z_b.detach().tolist()

    def standardise(z: list[list[float]]) -> list[list[float]]:
        cols = []
        for j in range(d):
            col = [row[j] for row in z]
            mean = sum(col) / n
            var = sum((x - mean) ** 2 for x in col) / n
            cols.append([(x - mean) / (var + 1e-5) ** 0.5 for x in col])
        return [[cols[j][i] for j in range(d)] for i in range(n)]

    sa, sb = standardise(a), standardise(b)
    expected = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(sa[k][i] * sb[k][j] for k in range(n)) / n
            expected += (1 - c) ** 2 if i == j else lam * c**2
    assert BarlowTwinsLoss(lam)(z_a, z_b).item() == pytest.approx(expected, abs=1e-10)


def test_identical_decorrelated_views_give_near_zero() -> None:
    # Orthonormal columns spanning centred data have mean 0: C is the
    # identity up to BatchNorm's eps, and a random pair is far from it.
    z = torch.randn(64, 8, dtype=torch.float64)
    q, _ = torch.linalg.qr(z - z.mean(dim=0))
    assert BarlowTwinsLoss()(q, q).item() < 1e-5
    assert BarlowTwinsLoss()(q, torch.randn(64, 8, dtype=torch.float64)).item() > 1.0


def test_gather_distributed_is_identity_without_process_group() -> None:
    z_a, z_b = _inputs(8, 16, seed=2)
    torch.testing.assert_close(BarlowTwinsLoss(gather_distributed=True)(z_a, z_b), BarlowTwinsLoss()(z_a, z_b))


def test_defaults() -> None:
    assert BarlowTwinsLoss().lambda_param == lightly_loss.BarlowTwinsLoss().lambda_param == 5e-3


def test_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        BarlowTwinsLoss()(torch.randn(4, 8), torch.randn(4, 7))
    with pytest.raises(ValueError, match="at least 2"):
        BarlowTwinsLoss()(torch.randn(1, 8), torch.randn(1, 8))
    with pytest.raises(ValueError, match="lambda_param"):
        BarlowTwinsLoss(lambda_param=-1.0)
