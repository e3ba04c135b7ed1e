"""`synthpos run` end to end on Fashion-MNIST at toy scale, through the real console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthpos.config import DataConfig
from synthpos.data import load_dataset
from synthpos.data.synthetic_store import SyntheticStore, dataset_fingerprint

SCRIPT = Path(sys.executable).parent / "synthpos"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed"),
]

SUBSET, K = 64, 2
CONFIG = f"""\
run_dir: run
seed: 0
data:
  name: fashion_mnist
  subset: {SUBSET}
train_generator:
  unet:
    block_out_channels: [8, 16]
    attention_levels: [1]
    layers_per_block: 1
    norm_num_groups: 4
  num_train_timesteps: 50
  warmup_steps: 2
  max_steps: 4
  batch_size: 8
  precision: fp32
generate:
  candidates: {K}
  num_steps: 2
  shard_size: 32
  batch_size: 64
  precision: fp32
pretrain:
  synthetic:
    mode: clsp
  backbone:
    name: convnet
    width: 8
  projector_hidden_dim: 32
  projector_out_dim: 16
  batch_size: 32
  epochs: 1
  precision: fp32
  accelerator: cpu
  augment:
    crop_size: 28
evaluate:
  max_train: 200
  knn_k: 10
  linear:
    epochs: 2
"""


def _run(cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")
    env.pop("SYNTHPOS_DATA", None)
    return subprocess.run([str(SCRIPT), "run", "--config", "cfg.yaml", "-q", *extra], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1800)


def test_run_pipeline_then_skip_everything(tmp_path: Path) -> None:
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    result = _run(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    run = tmp_path / "run"

    # Stage 1: a diffusers DDPMPipeline directory.
    assert (run / "generator" / "model" / "model_index.json").is_file()
    assert (run / "generator" / "model" / "unet" / "config.json").is_file()
    assert (run / "generator" / "COMPLETE").is_file()

    # Stage 2: a complete store, K candidates for each of the subset's anchors, tied to those images.
    images = load_dataset(DataConfig(subset=SUBSET), "train").images
    store = SyntheticStore.open(run / "store", "fashion_mnist", "train", images)
    assert store.complete and len(store) == SUBSET and store.candidates == K
    assert store.layout.num_shards == 2
    assert store.manifest["dataset"] == dataset_fingerprint("fashion_mnist", "train", images)
    assert store.get([0, 63], [1, 0]).shape == (2, 28, 28, 1)

    # Stage 3 and 4.
    assert (run / "pretrain" / "backbone.pt").is_file()
    metrics_path = run / "evaluate" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    scores = metrics["results"]["fashion_mnist"]
    for key in ("knn_top1", "linear_top1"):
        assert 0.0 <= scores[key] <= 1.0, scores
    assert json.loads(result.stdout) == metrics["results"]  # the command prints what it wrote

    # Again: every stage is done, nothing runs, nothing is rewritten.
    mtime, content = metrics_path.stat().st_mtime_ns, metrics_path.read_bytes()
    backbone_mtime = (run / "pretrain" / "backbone.pt").stat().st_mtime_ns
    again = _run(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("train-generator", "generate", "pretrain", "evaluate"):
        assert f"skip {stage}" in again.stderr, again.stderr
    assert metrics_path.stat().st_mtime_ns == mtime and metrics_path.read_bytes() == content
    assert (run / "pretrain" / "backbone.pt").stat().st_mtime_ns == backbone_mtime
    assert json.loads(again.stdout) == metrics["results"]

    # More epochs: pretraining and evaluation are redone (the change named, the old ones kept), nothing else.
    more = _run(tmp_path, "--set", "pretrain.epochs=2")
    assert more.returncode == 0, more.stderr[-3000:]
    assert "skip train-generator" in more.stderr and "skip generate" in more.stderr
    assert "redo pretrain: pretrain.epochs 1 -> 2" in " ".join(more.stderr.split()), more.stderr
    assert (run / "previous" / "pretrain" / "pretrain" / "backbone.pt").read_bytes() != (run / "pretrain" / "backbone.pt").read_bytes()
    assert (run / "previous" / "evaluate" / "evaluate" / "metrics.json").read_bytes() == content
    assert json.loads((run / "pretrain" / "summary.json").read_text())["epochs"] == 2
    assert json.loads((run / "pretrain" / "stage_record.json").read_text())["complete"] is True
