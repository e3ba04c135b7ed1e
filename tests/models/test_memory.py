"""MemoryQueue and NearestNeighbourSupport against a python list model and brute force."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from synthpos.models.memory import MemoryQueue, NearestNeighbourSupport


class _ListQueue:
    """The reference: slots written one key at a time, pointer wrapping at the end."""

    def __init__(self, initial: list[list[float]]) -> None:
        self.slots = [list(row) for row in initial]
        self.pointer = 0

    def enqueue(self, keys: list[list[float]]) -> None:
        for key in keys:
            self.slots[self.pointer] = key
            self.pointer = (self.pointer + 1) % len(self.slots)


def test_initial_content_is_random_unit_vectors() -> None:
    torch.manual_seed(0)
    queue = MemoryQueue(50, 8)
    torch.testing.assert_close(queue.queue.norm(dim=1), torch.ones(50))
    assert queue.queue.std() > 0.1  # not all equal
    assert int(queue.pointer) == 0


@pytest.mark.parametrize(
    ("size", "batches"), [(10, [3, 3, 3, 3, 3]), (8, [4, 4, 4]), (5, [7, 2, 11]), (1, [2, 1]), (6, [6, 1, 5])]
)
def test_ring_buffer_order_and_wrap_match_list_model(size: int, batches: list[int]) -> None:
    torch.manual_seed(size)
    queue = MemoryQueue(size, 3)
    model = _ListQueue(queue.queue.tolist())
    for b in batches:
        keys = F.normalize(torch.randn(b, 3), dim=1)
        queue.enqueue(keys)
        model.enqueue(keys.tolist())
        torch.testing.assert_close(queue.queue, torch.tensor(model.slots), rtol=0, atol=1e-6)
        assert int(queue.pointer) == model.pointer


def test_keys_are_normalised_and_detached() -> None:
    queue = MemoryQueue(4, 2)
    keys = torch.tensor([[3.0, 4.0], [0.0, -2.0]], requires_grad=True)
    queue.enqueue(keys)
    torch.testing.assert_close(queue.queue[:2], torch.tensor([[0.6, 0.8], [0.0, -1.0]]))
    assert not queue.bank.requires_grad


def test_queue_is_a_copy() -> None:
    queue = MemoryQueue(4, 2)
    snapshot = queue.queue
    queue.enqueue(torch.ones(2, 2))
    assert not torch.equal(snapshot, queue.queue)


def test_state_dict_round_trip_keeps_content_and_pointer() -> None:
    queue = MemoryQueue(6, 3)
    queue.enqueue(torch.randn(4, 3))
    state = queue.state_dict()
    assert set(state) == {"bank", "pointer"}
    restored = MemoryQueue(6, 3)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.queue, queue.queue)
    assert int(restored.pointer) == 4


def test_nearest_matches_brute_force() -> None:
    torch.manual_seed(1)
    support = NearestNeighbourSupport(40, 6)
    support.enqueue(torch.randn(25, 6))
    z = torch.randn(9, 6, requires_grad=True)
    found = support.nearest(3 * z)  # scale does not matter: cosine similarity
    stored = support.queue
    for i in range(9):
        sims = [F.cosine_similarity(z[i].detach(), stored[j], dim=0).item() for j in range(40)]
        best = max(range(40), key=lambda j: sims[j])
        torch.testing.assert_close(found[i], stored[best])
    assert not found.requires_grad


def test_nearest_of_a_stored_vector_is_itself() -> None:
    support = NearestNeighbourSupport(16, 4)
    keys = F.normalize(torch.randn(16, 4), dim=1)
    support.enqueue(keys)
    torch.testing.assert_close(support.nearest(keys * 2), keys, atol=1e-6, rtol=0)


def test_errors() -> None:
    with pytest.raises(ValueError, match="size"):
        MemoryQueue(0, 4)
    with pytest.raises(ValueError, match="dim"):
        MemoryQueue(4, 0)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        MemoryQueue(8, 4).enqueue(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        NearestNeighbourSupport(8, 4).nearest(torch.randn(4))
