"""Lightning DDP on 2 CPU processes (gloo) takes the same step as one process on the whole batch.

For SimCLR, CLSP-SimCLR, MoCo v2+ and Barlow Twins: one SGD step (momentum, weight decay)
with the batch split over two ranks must give the same parameters, momentum encoder and
queues as one process on the concatenated batch. It fails if a loss gathers without
gradient, keeps only this rank's gradient, normalises per rank, or fills the MoCo queue
with one rank's keys.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("ddp_step.py")
CASES = ["simclr", "clsp_simclr", "mocov2plus", "barlow_twins"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(world: int, out: Path) -> None:
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    env.pop("LOCAL_RANK", None)
    result = subprocess.run([sys.executable, str(SCRIPT), str(world), str(out)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def states(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, dict[str, torch.Tensor]]]:
    root = tmp_path_factory.mktemp("ddp")
    out = {}
    for world in (1, 2):
        _run(world, root / f"world{world}")
        out[world] = {case: torch.load(root / f"world{world}" / f"{case}.pt") for case in CASES}
    out[0] = {case: torch.load(root / "world1" / f"{case}.init.pt") for case in CASES}
    return out


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("case", CASES)
def test_two_processes_take_the_step_of_one(states, case: str) -> None:
    one, two = states[1][case], states[2][case]
    assert one.keys() == two.keys()
    for name, value in one.items():
        if value.is_floating_point():
            torch.testing.assert_close(two[name], value, rtol=1e-4, atol=1e-6, msg=f"{case}: {name} differs")
        else:
            assert torch.equal(two[name], value), f"{case}: {name} differs"
    # The step moved the weights, so the equality above is not trivial.
    initial = states[0][case]
    assert all((one[n] - initial[n]).abs().max() > 1e-4 for n in one if n.startswith("backbone.") and n.endswith("weight"))
    if case == "mocov2plus":  # momentum encoder and queues updated after the step, from both ranks' keys
        assert any(not torch.equal(one[n], initial[n]) for n in one if n.startswith("queues."))
