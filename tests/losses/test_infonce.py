"""MultiPositiveInfoNCELoss and SupConLoss against NT-Xent and a double loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from synthpos.losses import MultiPositiveInfoNCELoss, NTXentLoss, SupConLoss


def _supcon_by_hand(z: torch.Tensor, ids: list[int], temperature: float) -> float:
    """Khosla et al.'s L_out, written as loops over anchors, positives and the denominator."""
    v = F.normalize(z.detach().double(), dim=1).tolist()
    m = len(v)

    def sim(a: int, b: int) -> float:
        return sum(x * y for x, y in zip(v[a], v[b])) / temperature

    losses = []
    for a in range(m):
        positives = [p for p in range(m) if p != a and ids[p] == ids[a]]
        if not positives:
            continue
        denominator = sum(math.exp(sim(a, j)) for j in range(m) if j != a)
        total = 0.0
        for p in positives:
            total += math.log(math.exp(sim(a, p)) / denominator)
        losses.append(-total / len(positives))
    return sum(losses) / len(losses)


@pytest.mark.parametrize(("n", "d", "temperature"), [(1, 3, 0.5), (8, 16, 0.1), (32, 128, 0.2), (17, 7, 1.0)])
def test_two_views_equal_ntxent(n: int, d: int, temperature: float) -> None:
    g = torch.Generator().manual_seed(n + d)
    z0 = torch.randn(n, d, generator=g, requires_grad=True)
    z1 = torch.randn(n, d, generator=g, requires_grad=True)
    instance = torch.arange(n).repeat(2)
    ours = MultiPositiveInfoNCELoss(temperature)(torch.cat([z0, z1]), instance)
    ref = NTXentLoss(temperature)(z0, z1)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)
    for a, b in zip(torch.autograd.grad(ours, [z0, z1]), torch.autograd.grad(ref, [z0, z1])):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("views", [2, 3, 5])
def test_multi_view_matches_double_loop(views: int) -> None:
    g = torch.Generator().manual_seed(views)
    n = 6
    z = torch.randn(views * n, 8, generator=g, dtype=torch.float64)
    # Shuffled rows: positives are found by id, not by position.
    perm = torch.randperm(views * n, generator=g)
    instance = torch.arange(n).repeat(views)[perm]
    z = z[perm]
    expected = _supcon_by_hand(z, instance.tolist(), 0.3)
    assert MultiPositiveInfoNCELoss(0.3)(z, instance).item() == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("temperature", [0.07, 0.1, 0.5])
def test_supcon_matches_double_loop(temperature: float) -> None:
    g = torch.Generator().manual_seed(3)
    labels = torch.tensor([0, 1, 2, 0, 1, 1, 3, 2, 0, 4, 2, 1])  # 3 and 4 have no positive
    z = torch.randn(len(labels), 16, generator=g, dtype=torch.float64)
    expected = _supcon_by_hand(z, labels.tolist(), temperature)
    assert SupConLoss(temperature)(z, labels).item() == pytest.approx(expected, abs=1e-9)


def test_gradient_is_finite_with_anchors_without_positives() -> None:
    z = torch.randn(6, 4, requires_grad=True)
    loss = SupConLoss()(z, torch.tensor([0, 0, 1, 2, 3, 4]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    # Rows 2..5 are only negatives of anchors 0 and 1, so they still get a gradient.
    assert torch.count_nonzero(z.grad[2:]) > 0


def test_no_positive_anywhere_gives_zero() -> None:
    z = torch.randn(4, 3, requires_grad=True)
    loss = MultiPositiveInfoNCELoss()(z, torch.arange(4))
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph


def test_gather_distributed_is_identity_without_process_group() -> None:
    z, ids = torch.randn(10, 4), torch.tensor([0, 1, 2, 3, 4] * 2)
    torch.testing.assert_close(
        MultiPositiveInfoNCELoss(0.2, gather_distributed=True)(z, ids), MultiPositiveInfoNCELoss(0.2)(z, ids)
    )


def test_errors() -> None:
    loss_fn = MultiPositiveInfoNCELoss()
    with pytest.raises(ValueError, match="z must have shape"):
        loss_fn(torch.randn(4), torch.arange(4))
    with pytest.raises(ValueError, match="instance must have shape"):
        loss_fn(torch.randn(4, 3), torch.arange(5))
    with pytest.raises(ValueError, match="integer"):
        loss_fn(torch.randn(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="labels must have shape"):
        SupConLoss()(torch.randn(4, 3), torch.arange(3))
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(temperature=-1.0)
    assert MultiPositiveInfoNCELoss().temperature == SupConLoss().temperature == 0.1
