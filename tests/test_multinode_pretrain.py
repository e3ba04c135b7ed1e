"""`synthpos pretrain` over two "machines" as the README launches it: two torchrun calls (--nnodes 2,
--node_rank 0 and 1, one process each) on this host, Lightning's ``num_nodes=2``, gloo on the CPU, a
streamed image folder read by one worker a rank. Both ranks train, rank 0 writes the backbone."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "data"))
from test_stream import write_jpeg_folder  # noqa: E402

TORCHRUN = Path(sys.executable).parent / "torchrun"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun not installed beside python")
def test_pretrain_on_two_nodes_through_torchrun(tmp_path: Path) -> None:
    write_jpeg_folder(tmp_path / "tree", per_class=6)  # 18 images: 9 a rank, 2 steps of 4 (a global batch of 8)
    port = str(_free_port())
    settings = [f"run_dir={tmp_path / 'run'}", "data.name=image_folder", f"data.root={tmp_path / 'tree'}",
                "data.image_size=16", "data.stream=true", "data.num_workers=1", "pretrain.backbone.name=convnet",
                "pretrain.backbone.width=4", "pretrain.projector_hidden_dim=16", "pretrain.projector_out_dim=8",
                "pretrain.batch_size=8", "pretrain.epochs=1", "pretrain.precision=fp32", "pretrain.augment.crop_size=16",
                "pretrain.optimizer.warmup_epochs=0", "pretrain.accelerator=cpu", "pretrain.devices=1",
                "pretrain.num_nodes=2", "pretrain.knn_every_epochs=0", "pretrain.num_threads=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        env.pop(key, None)
    nodes = [subprocess.Popen(
        [str(TORCHRUN), "--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
         "--master_port", port, "-m", "synthpos.cli", "pretrain", "-q", *[a for s in settings for a in ("--set", s)]],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for node in (0, 1)]
    logs = []
    try:
        for proc in nodes:
            logs.append(proc.communicate(timeout=300)[0])
    finally:
        for proc in nodes:
            if proc.poll() is None:
                proc.kill()
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(log[-2000:] for log in logs)
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in logs[0] and "GLOBAL_RANK: 1, MEMBER: 2/2" in logs[1]
    summary = json.loads((tmp_path / "run" / "pretrain" / "summary.json").read_text())
    assert (summary["epochs"], summary["steps"]) == (1, 2)  # 9 images a rank, per-rank batch 4: 2 steps, not 4
    assert (tmp_path / "run" / "pretrain" / "backbone.pt").is_file()
