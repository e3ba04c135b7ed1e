"""A real two-process gloo run on CPU for ``synthpos.distributed`` and the
distributed NT-Xent loss.

Children write their results to files in ``tmp_path``; the parent asserts.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from synthpos import distributed
from synthpos.losses import NTXentLoss

WORLD = 2
LOCAL_N = 6  # per-rank batch
IN_DIM, OUT_DIM = 8, 5
LR = 0.5
TEMPERATURE = 0.5


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    x0 = torch.randn(WORLD * LOCAL_N, IN_DIM, generator=g, dtype=torch.float64)
    x1 = x0 + 0.5 * torch.randn(WORLD * LOCAL_N, IN_DIM, generator=g, dtype=torch.float64)
    return x0, x1


def _model() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(IN_DIM, OUT_DIM).double()


class _GatherWithoutSum(torch.autograd.Function):
    """The known-buggy gather (lightly#1528, solo-learn#206): backward keeps
    only this rank's slice of its own gradient, without summing over ranks."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.n = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        start = dist.get_rank() * ctx.n
        return grad[start : start + ctx.n]


def _ddp_step(rank: int) -> tuple[dict[str, torch.Tensor], float]:
    x0, x1 = _global_batch()
    rows = slice(rank * LOCAL_N, (rank + 1) * LOCAL_N)
    model = nn.parallel.DistributedDataParallel(_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    # One forward for both views: DDP expects one forward per backward.
    z = model(torch.cat([x0[rows], x1[rows]]))
    z0, z1 = z.chunk(2)
    loss = NTXentLoss(temperature=TEMPERATURE, gather_distributed=True)(z0, z1)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    params = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
    return params, loss.item()


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        result: dict[str, Any] = {
            "rank": distributed.rank(),
            "world_size": distributed.world_size(),
            "rank_offset": distributed.rank_offset(LOCAL_N),
        }

        # (a) forward is the concatenation in rank order; backward sums the
        # incoming gradients of all ranks and keeps this rank's slice.
        x = (torch.arange(LOCAL_N * 3, dtype=torch.float64).reshape(LOCAL_N, 3) + 100 * rank)
        x.requires_grad_()
        gathered = distributed.gather(x)
        coeff = torch.full_like(gathered, float(rank + 1)) * torch.arange(
            1, gathered.shape[0] + 1, dtype=torch.float64
        ).unsqueeze(1)
        (gathered * coeff).sum().backward()
        result["gathered"] = gathered.detach()
        result["gather_grad"] = x.grad.detach()

        # (b) one DDP step with the correct gather, then with the buggy one.
        result["params"], result["loss"] = _ddp_step(rank)
        correct_gather = distributed.gather
        distributed.gather = _GatherWithoutSum.apply  # ntxent looks it up at call time
        try:
            result["wrong_params"], _ = _ddp_step(rank)
        finally:
            distributed.gather = correct_gather

        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        # Both ranks reach here before either tears gloo down: a rank that destroys its group
        # while its peer still holds the connection can abort the peer ("terminate called
        # without an active exception"), which failed this test once on an idle machine.
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_process_gloo(tmp_path: Path) -> None:
    mp.spawn(
        _worker,
        args=(str(tmp_path / "init"), str(tmp_path)),
        nprocs=WORLD,
        join=True,
    )
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]

    # Single-process reference: the same step on the whole batch.
    x0, x1 = _global_batch()
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    z = model(torch.cat([x0, x1]))
    z0, z1 = z.chunk(2)
    ref_loss = NTXentLoss(temperature=TEMPERATURE)(z0, z1)
    optimizer.zero_grad()
    ref_loss.backward()
    optimizer.step()
    ref_params = model.state_dict()

    expected_gathered = torch.cat(
        [torch.arange(LOCAL_N * 3, dtype=torch.float64).reshape(LOCAL_N, 3) + 100 * r for r in range(WORLD)]
    )
    # Each rank r multiplies row j of the gathered tensor by (r + 1) * (j + 1);
    # summed over ranks this rank's row i gets (1 + 2) * (rank * N + i + 1).
    total_factor = sum(r + 1 for r in range(WORLD))
    for r, res in enumerate(results):
        assert res["rank"] == r
        assert res["world_size"] == WORLD
        assert res["rank_offset"] == r * LOCAL_N
        torch.testing.assert_close(res["gathered"], expected_gathered, rtol=0, atol=0)
        rows = torch.arange(r * LOCAL_N + 1, (r + 1) * LOCAL_N + 1, dtype=torch.float64)
        expected_grad = (total_factor * rows).unsqueeze(1).expand(LOCAL_N, 3)
        torch.testing.assert_close(res["gather_grad"], expected_grad, rtol=0, atol=0)

    # The global loss is the mean of the per-rank losses (equal local batches).
    mean_loss = sum(res["loss"] for res in results) / WORLD
    assert mean_loss == pytest.approx(ref_loss.item(), abs=1e-9)

    for res in results:
        for name, ref in ref_params.items():
            torch.testing.assert_close(res["params"][name], ref, rtol=0, atol=1e-6)

    # The test can fail: the buggy gather yields a visibly different step.
    wrong_gap = max(
        (res["wrong_params"][name] - ref).abs().max().item()
        for res in results
        for name, ref in ref_params.items()
    )
    assert wrong_gap > 1e-3, wrong_gap


def test_single_process_helpers() -> None:
    assert not dist.is_initialized()
    assert distributed.world_size() == 1
    assert distributed.rank() == 0
    assert distributed.rank_offset(32) == 0
    x = torch.randn(4, 3, requires_grad=True)
    assert distributed.gather(x) is x
    with pytest.raises(ValueError, match="0-d"):
        distributed.gather(torch.tensor(1.0))
