"""NegativeCosineSimilarity against lightly's reference implementation."""

from __future__ import annotations

import pytest
import torch

from synthpos.losses import NegativeCosineSimilarity

lightly_loss = pytest.importorskip("lightly.loss")


@pytest.mark.parametrize(
    ("shape", "dim"), [((1, 3), 1), ((8, 16), 1), ((32, 128), 1), ((17, 7), 0), ((4, 5, 6), 2), ((4, 5, 6), -2)]
)
@pytest.mark.parametrize("eps", [1e-8, 1e-2])
def test_value_and_gradients_equal_lightly(shape: tuple[int, ...], dim: int, eps: float) -> None:
    g = torch.Generator().manual_seed(sum(shape) + dim)
    x0 = torch.randn(shape, generator=g).requires_grad_()
    x1 = torch.randn(shape, generator=g).requires_grad_()
    ours = NegativeCosineSimilarity(dim=dim, eps=eps)(x0, x1)
    ours_grads = torch.autograd.grad(ours, [x0, x1])
    ref = lightly_loss.NegativeCosineSimilarity(dim=dim, eps=eps)(x0, x1)
    ref_grads = torch.autograd.grad(ref, [x0, x1])
    assert ours.shape == ()
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)
    for g_ours, g_ref in zip(ours_grads, ref_grads):
        torch.testing.assert_close(g_ours, g_ref, atol=1e-6, rtol=1e-6)


def test_closed_form_values() -> None:
    x = torch.randn(6, 4)
    loss_fn = NegativeCosineSimilarity()
    assert loss_fn(x, 3 * x).item() == pytest.approx(-1.0, abs=1e-6)
    assert loss_fn(x, -x).item() == pytest.approx(1.0, abs=1e-6)
    orth = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert loss_fn(orth, orth.flip(1)).item() == pytest.approx(0.0, abs=1e-7)


def test_errors() -> None:
    loss_fn = NegativeCosineSimilarity()
    with pytest.raises(ValueError, match="same shape"):
        loss_fn(torch.randn(4, 8), torch.randn(4, 7))
    with pytest.raises(ValueError, match="non-empty"):
        loss_fn(torch.randn(0, 8), torch.randn(0, 8))
    with pytest.raises(ValueError, match="dim=3"):
        NegativeCosineSimilarity(dim=3)(torch.randn(4, 8), torch.randn(4, 8))
    with pytest.raises(ValueError, match="dim != 0"):
        NegativeCosineSimilarity(dim=0)(torch.randn(4, 8), torch.randn(4, 8), weights=torch.ones(8))
