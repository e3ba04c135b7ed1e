"""VICRegLoss against lightly's reference implementation and a closed form."""

from __future__ import annotations

import pytest
import torch

from synthpos.losses import VICRegLoss

lightly_loss = pytest.importorskip("lightly.loss")

SHAPES = [(2, 3), (8, 16), (32, 128), (17, 7), (64, 32)]
PARAMS = [(25.0, 25.0, 1.0, 1e-4), (1.0, 0.5, 10.0, 1e-2), (0.0, 3.0, 0.1, 0.0)]


def _inputs(n: int, d: int, seed: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Stds on both sides of 1, so the variance hinge is active for some features.
    scale = torch.linspace(0.2, 2.0, d, dtype=dtype)
    z_a = (scale * torch.randn(n, d, generator=g, dtype=dtype)).requires_grad_()
    z_b = (scale * torch.randn(n, d, generator=g, dtype=dtype) + 0.5).requires_grad_()
    return z_a, z_b


@pytest.mark.parametrize(("n", "d"), SHAPES)
@pytest.mark.parametrize(("lam", "mu", "nu", "eps"), PARAMS)
def test_value_and_gradients_equal_lightly(n: int, d: int, lam: float, mu: float, nu: float, eps: float) -> None:
    z_a, z_b = _inputs(n, d, seed=n * 100 + d)
    ours = VICRegLoss(lambda_param=lam, mu_param=mu, nu_param=nu, eps=eps)(z_a, z_b)
    ours_grads = torch.autograd.grad(ours, [z_a, z_b])
    ref = lightly_loss.VICRegLoss(lambda_param=lam, mu_param=mu, nu_param=nu, eps=eps)(z_a, z_b)
    ref_grads = torch.autograd.grad(ref, [z_a, z_b])
    assert ours.shape == ()
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    for g_ours, g_ref in zip(ours_grads, ref_grads):
        torch.testing.assert_close(g_ours, g_ref, atol=1e-6, rtol=1e-4)


def test_matches_closed_form() -> None:
    n, d = 7, 3
    z_a, z_b = _inputs(n, d, seed=3, dtype=torch.float64)
    a, b = z_a.detach().tolist(), z_b.detach().tolist()
    inv = sum((a[i][j] - b[i][j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def var_cov(z: list[list[float]]) -> tuple[float, float]:
        means = [sum(row[j] for row in z) / n for j in range(d)]
        cov = [
            [sum((row[i] - means[i]) * (row[j] - means[j]) for row in z) / (n - 1) for j in range(d)]
            for i in range(d)
        ]
        var = sum(max(0.0, 1 - (cov[j][j] + 1e-4) ** 0.5) for j in range(d)) / d
        off = sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
        return var, off

    (va, ca), (vb, cb) = var_cov(a), var_cov(b)
    expected = 25 * inv + 25 * 0.5 * (va + vb) + 1 * (ca + cb)
    assert VICRegLoss()(z_a, z_b).item() == pytest.approx(expected, abs=1e-10)


def test_gather_distributed_is_identity_without_process_group() -> None:
    z_a, z_b = _inputs(8, 16, seed=2)
    torch.testing.assert_close(VICRegLoss(gather_distributed=True)(z_a, z_b), VICRegLoss()(z_a, z_b))


def test_defaults_match_lightly() -> None:
    ours, ref = VICRegLoss(), lightly_loss.VICRegLoss()
    assert (ours.lambda_param, ours.mu_param, ours.nu_param, ours.eps) == (
        ref.lambda_param,
        ref.mu_param,
        ref.nu_param,
        ref.eps,
    )


def test_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        VICRegLoss()(torch.randn(4, 8), torch.randn(5, 8))
    with pytest.raises(ValueError, match="at least 2"):
        VICRegLoss()(torch.randn(1, 8), torch.randn(1, 8))
    with pytest.raises(ValueError, match="mu_param"):
        VICRegLoss(mu_param=-1.0)
