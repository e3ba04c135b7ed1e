"""CKA against closed forms and a second, straightforward implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthpos.evaluation import cka
from synthpos.evaluation.cka import MinibatchCKA


def _naive_cka(x: np.ndarray, y: np.ndarray, kernel: str = "linear", unbiased: bool = False) -> float:
    """Loops and textbook formulas (Kornblith et al. eq. 3; Song et al. 2012 eq. 5), in float64 numpy."""
    n = len(x)

    def k_of(z):
        if kernel == "linear":
            return np.array([[z[i] @ z[j] for j in range(n)] for i in range(n)])
        d = np.array([[np.sum((z[i] - z[j]) ** 2) for j in range(n)] for i in range(n)])
        med = np.median(d[~np.eye(n, dtype=bool)])
        return np.exp(-d / (2 * med))

    def hsic(k, l):
        if not unbiased:
            h = np.eye(n) - np.ones((n, n)) / n
            return np.trace(k @ h @ l @ h) / (n - 1) ** 2
        k, l = k.copy(), l.copy()
        np.fill_diagonal(k, 0)
        np.fill_diagonal(l, 0)
        one = np.ones(n)
        return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
                - 2 / (n - 2) * one @ k @ l @ one) / (n * (n - 3))

    k, l = k_of(x), k_of(y)
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_equals_a_straightforward_implementation(kernel: str, unbiased: bool) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 5))
    y = np.tanh(x @ rng.normal(size=(5, 7))) + 0.5 * rng.normal(size=(30, 7))
    assert cka(torch.tensor(x), torch.tensor(y), kernel, unbiased) == pytest.approx(_naive_cka(x, y, kernel, unbiased), rel=1e-9)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_one_for_itself_and_invariant_to_orthogonal_maps_and_isotropic_scaling(kernel: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(50, 8, dtype=torch.float64)
    y = torch.randn(50, 6, dtype=torch.float64) + x[:, :6]
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    assert cka(x, x, kernel) == pytest.approx(1.0, abs=1e-12)
    assert cka(x, x, kernel, unbiased=True) == pytest.approx(1.0, abs=1e-12)
    base = cka(x, y, kernel)
    assert 0.1 < base < 0.99
    assert cka(x @ q, y, kernel) == pytest.approx(base, rel=1e-9)
    assert cka(3.7 * x, 0.2 * y, kernel) == pytest.approx(base, rel=1e-9)


def test_linear_cka_not_invariant_to_anisotropic_scaling() -> None:
    torch.manual_seed(1)
    x = torch.randn(40, 4, dtype=torch.float64)
    y = x + 0.3 * torch.randn(40, 4, dtype=torch.float64)
    assert cka(x * torch.tensor([10.0, 1, 1, 1], dtype=torch.float64), y) != pytest.approx(cka(x, y), rel=1e-3)


def test_hand_computed_small_case() -> None:
    # x = (1, 2, 3, 4)', y = (1, 1, 2, 2)' (n = 4, one feature each): linear CKA is the squared
    # correlation. Centred: x = (-1.5, -0.5, 0.5, 1.5), y = (-0.5, -0.5, 0.5, 0.5); x'y = 2,
    # x'x = 5, y'y = 1, so CKA = (x'y)^2 / (x'x y'y) = 4 / 5.
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    y = torch.tensor([[1.0], [1.0], [2.0], [2.0]])
    assert cka(x, y) == pytest.approx(0.8, abs=1e-12)


def test_minibatch_cka_of_one_batch_is_unbiased_cka() -> None:
    torch.manual_seed(2)
    a1, a2 = torch.randn(20, 6), torch.randn(20, 4, 2)
    b1 = a1 @ torch.randn(6, 5) + 0.1 * torch.randn(20, 5)
    acc = MinibatchCKA()
    acc.update([a1, a2], [b1])
    m = acc.matrix()
    assert m.shape == (2, 1)
    assert float(m[0, 0]) == pytest.approx(cka(a1, b1, unbiased=True), rel=1e-9)
    assert float(m[1, 0]) == pytest.approx(cka(a2, b1, unbiased=True), rel=1e-9)


def test_errors() -> None:
    with pytest.raises(ValueError, match="same images"):
        cka(torch.randn(5, 2), torch.randn(6, 2))
    with pytest.raises(ValueError, match="kernel"):
        cka(torch.randn(5, 2), torch.randn(5, 2), kernel="cosine")
    with pytest.raises(ValueError, match="at least 4"):
        cka(torch.randn(3, 2), torch.randn(3, 2), unbiased=True)
