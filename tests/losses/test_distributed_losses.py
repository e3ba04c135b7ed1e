"""A real two-process gloo run: the losses with ``gather_distributed=True`` and
``MemoryQueue.enqueue`` behave like one process on the concatenated batch.

DDP averages parameter gradients over ranks, so a distributed loss trains
exactly like one process when the rank-averaged gradients equal the
single-process ones: for rank r's input rows, ``grad_r(loss_r) / world_size``
must equal the single-process gradient of the global loss at those rows.
Children write their results to files in ``tmp_path``; the parent asserts.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from synthpos.losses import (
    BarlowTwinsLoss,
    DCLLoss,
    DCLWLoss,
    MoCoLoss,
    MultiPositiveInfoNCELoss,
    NTXentLoss,
    SupConLoss,
    VICRegLoss,
)
from synthpos.models.memory import MemoryQueue

WORLD = 2
LOCAL_N = 6
DIM = 5

# Pair losses: name -> module factory, and whether every rank computes the
# global-batch loss (True) or its share of it (False: the per-rank losses
# average to the global one).
PAIR_LOSSES: dict[str, tuple[Callable[[bool], nn.Module], bool]] = {
    "ntxent": (lambda g: NTXentLoss(0.3, gather_distributed=g), False),
    "dcl": (lambda g: DCLLoss(0.2, gather_distributed=g), False),
    "dclw": (lambda g: DCLWLoss(0.2, sigma=0.5, gather_distributed=g), False),
    "moco_v3": (lambda g: MoCoLoss(0.2, gather_distributed=g), False),
    "barlow_twins": (lambda g: BarlowTwinsLoss(5e-2, gather_distributed=g), True),
    "vicreg": (lambda g: VICRegLoss(gather_distributed=g), True),
}
# Id losses: 9 rows per rank; ids 0-2 have views on both ranks, 3-11 on one
# rank only, so rank 0 has 3 anchors with a positive and rank 1 has 6.
ID_ROWS = 9
IDS = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 0, 1, 2, 3, 10, 11])
ID_LOSSES: dict[str, Callable[[bool], nn.Module]] = {
    "multipos": lambda g: MultiPositiveInfoNCELoss(0.2, gather_distributed=g),
    "supcon": lambda g: SupConLoss(0.5, gather_distributed=g),
}
QUEUE_SIZE, QUEUE_BATCH, QUEUE_STEPS = 7, 2, 3


def _pair_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x0 = torch.randn(WORLD * LOCAL_N, DIM, generator=g, dtype=torch.float64)
    x1 = x0 + 0.7 * torch.randn(WORLD * LOCAL_N, DIM, generator=g, dtype=torch.float64)
    return x0, x1


def _id_batch() -> torch.Tensor:
    return torch.randn(WORLD * ID_ROWS, DIM, generator=torch.Generator().manual_seed(8), dtype=torch.float64)


def _queue_keys(step: int, rank: int) -> torch.Tensor:
    return torch.randn(QUEUE_BATCH, 3, generator=torch.Generator().manual_seed(100 * step + rank))


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        result: dict[str, Any] = {}
        x0, x1 = _pair_batch()
        rows = slice(rank * LOCAL_N, (rank + 1) * LOCAL_N)
        for name, (factory, _) in PAIR_LOSSES.items():
            a = x0[rows].clone().requires_grad_()
            b = x1[rows].clone().requires_grad_()
            loss = factory(True)(a, b)
            grads = torch.autograd.grad(loss, [a, b])
            result[name] = (loss.detach(), grads)

        z = _id_batch()
        id_rows = slice(rank * ID_ROWS, (rank + 1) * ID_ROWS)
        for name, factory in ID_LOSSES.items():
            local = z[id_rows].clone().requires_grad_()
            loss = factory(True)(local, IDS[id_rows])
            result[name] = (loss.detach(), torch.autograd.grad(loss, [local]))

        torch.manual_seed(0)  # the same random start on every rank
        queue = MemoryQueue(QUEUE_SIZE, 3)
        for step in range(QUEUE_STEPS):
            queue.enqueue(_queue_keys(step, rank))
        result["queue"] = (queue.queue, int(queue.pointer))
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_gloo_losses_and_queue(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]

    x0, x1 = _pair_batch()
    for name, (factory, global_loss_per_rank) in PAIR_LOSSES.items():
        a, b = x0.clone().requires_grad_(), x1.clone().requires_grad_()
        ref = factory(False)(a, b)
        ref_grads = torch.autograd.grad(ref, [a, b])
        losses = [res[name][0] for res in results]
        if global_loss_per_rank:
            for loss in losses:
                torch.testing.assert_close(loss, ref.detach(), rtol=1e-10, atol=1e-10, msg=name)
        else:
            torch.testing.assert_close(sum(losses) / WORLD, ref.detach(), rtol=1e-10, atol=1e-10, msg=name)
        for view in range(2):
            ddp_grad = torch.cat([res[name][1][view] for res in results]) / WORLD
            torch.testing.assert_close(ddp_grad, ref_grads[view], rtol=1e-8, atol=1e-10, msg=name)

    z = _id_batch()
    for name, factory in ID_LOSSES.items():
        full = z.clone().requires_grad_()
        ref = factory(False)(full, IDS)
        (ref_grad,) = torch.autograd.grad(ref, [full])
        mean_loss = sum(res[name][0] for res in results) / WORLD
        torch.testing.assert_close(mean_loss, ref.detach(), rtol=1e-10, atol=1e-10, msg=name)
        ddp_grad = torch.cat([res[name][1][0] for res in results]) / WORLD
        torch.testing.assert_close(ddp_grad, ref_grad, rtol=1e-8, atol=1e-10, msg=name)
    # The ranks have different numbers of valid anchors, so a per-rank mean
    # would not average to the global loss: the test can tell.
    local_means = [
        ID_LOSSES["multipos"](False)(z[r * ID_ROWS : (r + 1) * ID_ROWS], IDS[r * ID_ROWS : (r + 1) * ID_ROWS])
        for r in range(WORLD)
    ]
    assert abs(sum(local_means).item() / WORLD - ID_LOSSES["multipos"](False)(z, IDS).item()) > 1e-3

    # The queue holds the keys of both ranks in rank order, identically on each.
    torch.manual_seed(0)
    expected = MemoryQueue(QUEUE_SIZE, 3)
    for step in range(QUEUE_STEPS):
        expected.enqueue(torch.cat([_queue_keys(step, r) for r in range(WORLD)]))
    for res in results:
        content, pointer = res["queue"]
        torch.testing.assert_close(content, expected.queue, rtol=0, atol=0)
        assert pointer == (QUEUE_STEPS * QUEUE_BATCH * WORLD) % QUEUE_SIZE == int(expected.pointer)
