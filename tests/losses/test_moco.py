"""MoCoLoss against lightly's memory-bank NT-Xent and a per-query loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from synthpos.losses import MoCoLoss
from synthpos.models.memory import MemoryQueue

lightly_loss = pytest.importorskip("lightly.loss")


def _by_hand(
    query: torch.Tensor, key: torch.Tensor, negatives: torch.Tensor | None, temperature: float
) -> list[float]:
    """Per-query InfoNCE; without a queue the other keys are the negatives."""
    q = F.normalize(query.detach().double(), dim=1).tolist()
    k = F.normalize(key.detach().double(), dim=1).tolist()

    def dot(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b))

    losses = []
    for i in range(len(q)):
        if negatives is None:
            others = [k[j] for j in range(len(k)) if j != i]
        else:
            others = F.normalize(negatives.detach().double(), dim=1).tolist()
        logits = [dot(q[i], k[i]) / temperature] + [dot(q[i], o) / temperature for o in others]
        losses.append(-logits[0] + math.log(sum(math.exp(s) for s in logits)))
    return losses


@pytest.mark.parametrize(
    ("n", "d", "q", "temperature"), [(1, 3, 5, 0.2), (8, 16, 32, 0.2), (32, 128, 64, 0.07), (17, 7, 100, 1.0)]
)
def test_equals_lightly_memory_bank_ntxent(n: int, d: int, q: int, temperature: float) -> None:
    torch.manual_seed(n + d + q)
    ref_fn = lightly_loss.NTXentLoss(temperature=temperature, memory_bank_size=(q, d))
    bank = ref_fn.memory_bank.bank.clone()  # (Q, D) unit vectors; lightly uses then updates it
    query = torch.randn(n, d, requires_grad=True)
    key = torch.randn(n, d, requires_grad=True)

    ours = MoCoLoss(temperature)(query, key, bank)
    ours_grads = torch.autograd.grad(ours, [query, key])
    ref = ref_fn(query, key)
    ref_grads = torch.autograd.grad(ref, [query, key])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    for g_ours, g_ref in zip(ours_grads, ref_grads):
        torch.testing.assert_close(g_ours, g_ref, atol=1e-5, rtol=1e-5)

    # lightly then writes the normalised keys at its pointer, as MemoryQueue
    # does (every case here fits before the end of the buffer, where lightly
    # drops the overflow instead of wrapping).
    queue = MemoryQueue(q, d)
    queue.bank.copy_(bank)
    queue.enqueue(key)
    torch.testing.assert_close(queue.queue, ref_fn.memory_bank.bank, atol=1e-6, rtol=0)


def test_matches_per_query_loop_with_queue() -> None:
    g = torch.Generator().manual_seed(0)
    query = torch.randn(7, 5, generator=g, dtype=torch.float64)
    key = torch.randn(7, 5, generator=g, dtype=torch.float64)
    queue = 4 * torch.randn(11, 5, generator=g, dtype=torch.float64)  # normalised by the loss
    expected = sum(_by_hand(query, key, queue, 0.2)) / 7
    assert MoCoLoss(0.2)(query, key, queue).item() == pytest.approx(expected, abs=1e-10)


def test_without_queue_other_keys_are_negatives() -> None:
    g = torch.Generator().manual_seed(1)
    query = torch.randn(9, 4, generator=g, dtype=torch.float64)
    key = torch.randn(9, 4, generator=g, dtype=torch.float64)
    expected = sum(_by_hand(query, key, None, 0.5)) / 9
    assert MoCoLoss(0.5)(query, key).item() == pytest.approx(expected, abs=1e-10)
    assert MoCoLoss(0.5, gather_distributed=True)(query, key).item() == pytest.approx(expected, abs=1e-10)


def test_gradient_reaches_query_and_key_but_not_queue() -> None:
    query, key = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    queue = MemoryQueue(16, 6)
    MoCoLoss()(query, key, queue.queue).backward()
    assert query.grad is not None and torch.count_nonzero(query.grad) > 0
    assert key.grad is not None and torch.count_nonzero(key.grad) > 0


def test_enqueue_after_forward_does_not_break_backward() -> None:
    # MoCo enqueues inside the training step, before Lightning calls backward.
    query, key = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6)
    queue = MemoryQueue(16, 6)
    loss = MoCoLoss()(query, key, queue.queue)
    queue.enqueue(key)
    loss.backward()
    assert query.grad is not None


def test_errors() -> None:
    ok = torch.randn(4, 8)
    with pytest.raises(ValueError, match="key"):
        MoCoLoss()(ok, torch.randn(4, 7))
    with pytest.raises(ValueError, match="queue"):
        MoCoLoss()(ok, ok, torch.randn(10, 7))
    with pytest.raises(ValueError, match="queue"):
        MoCoLoss()(ok, ok, torch.randn(0, 8))
    with pytest.raises(ValueError, match="temperature"):
        MoCoLoss(temperature=0.0)
    assert MoCoLoss().temperature == 0.2
