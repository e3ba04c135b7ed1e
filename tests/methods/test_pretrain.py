"""pretrain_stage end to end on a Fashion-MNIST subset: outputs, resume, CLSP with a store."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from synthpos.config import RunConfig, load_config
from synthpos.data import load_dataset
from synthpos.data.synthetic_store import SyntheticStore, dataset_fingerprint
from synthpos.methods.pretrain import pretrain_stage
from synthpos.models.backbones import load_backbone

FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed"),
]

SUBSET, BATCH = 256, 64  # 4 steps per epoch


def _config(run_dir: Path, *extra: str) -> RunConfig:
    return load_config(None, [
        f"run_dir={run_dir}", f"data.subset={SUBSET}",
        "pretrain.backbone.name=convnet", "pretrain.backbone.width=8",
        "pretrain.projector_hidden_dim=32", "pretrain.projector_out_dim=16",
        f"pretrain.batch_size={BATCH}", "pretrain.epochs=1", "pretrain.precision=fp32",
        "pretrain.augment.crop_size=28", "pretrain.optimizer.warmup_epochs=0", "pretrain.accelerator=cpu",
        *extra,
    ])


def _metrics(output_dir: Path, version: int) -> list[dict[str, str]]:
    path = output_dir / "logs" / f"version_{version}" / "metrics.csv"
    assert path.is_file(), sorted(p.name for p in (output_dir / "logs").rglob("*"))
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _values(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


def test_pretrain_writes_outputs_and_resumes(tmp_path: Path) -> None:
    config = _config(tmp_path / "run")
    out = config.pretrain_dir
    path = pretrain_stage(config, show_progress=False)

    assert path == out / "backbone.pt"
    for name in ("backbone.pt", "backbone.json", "summary.json", "config.yaml", "checkpoints/last.ckpt"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == SUBSET // BATCH and summary["epochs"] == 1
    # The recorded config is the one that ran.
    assert load_config(out / "config.yaml") == config

    backbone = load_backbone(path).eval()
    assert backbone.feature_dim == 64
    with torch.no_grad():
        features = backbone(torch.randn(2, 1, 28, 28))
    assert features.shape == (2, 64) and torch.isfinite(features).all()
    first_weights = {k: v.clone() for k, v in backbone.state_dict().items()}
    rows = _metrics(out, 0)
    losses = _values(rows, "train/loss")
    assert losses and all(math.isfinite(v) and v > 0 for v in losses)

    # Two epochs now: the run continues from last.ckpt (steps 4 -> 8), it does not start over.
    config2 = _config(tmp_path / "run", "pretrain.epochs=2")
    pretrain_stage(config2, show_progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 * SUBSET // BATCH and summary["epochs"] == 2
    resumed = _metrics(out, 1)
    steps = [int(r["step"]) for r in resumed if r.get("train/loss")]
    assert steps and min(steps) >= SUBSET // BATCH, steps  # a fresh run would log step 3 again
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2 * SUBSET // BATCH
    second = load_backbone(path).state_dict()
    assert any(not torch.equal(second[k], first_weights[k]) for k in first_weights)  # it trained further


def test_clsp_pretrain_with_a_store(tmp_path: Path) -> None:
    config = _config(tmp_path / "run", "pretrain.synthetic.mode=clsp", "pretrain.synthetic.weight=0.5",
                     f"pretrain.store={tmp_path / 'store'}")
    images = load_dataset(config.data, "train").images
    assert images.shape == (SUBSET, 28, 28, 1)
    k = 2
    store = SyntheticStore.create(tmp_path / "store", dataset_fingerprint("fashion_mnist", "train", images),
                                  candidates=k, shard_size=100, generator={"kind": "test-noise"})
    rng = np.random.default_rng(0)
    noisy = np.clip(images[:, None].astype(np.int16) + rng.integers(-40, 41, size=(SUBSET, k, 28, 28, 1)), 0, 255)
    noisy = noisy.astype(np.uint8)
    for s in range(store.layout.num_shards):
        start, end = store.layout.shard_range(s)
        store.write_shard(s, noisy[start:end])

    path = pretrain_stage(config, show_progress=False)
    assert path.is_file() and (config.pretrain_dir / "checkpoints" / "last.ckpt").is_file()
    rows = _metrics(config.pretrain_dir, 0)
    synthetic, ntxent, total = (_values(rows, f"train/{key}") for key in ("synthetic", "ntxent", "loss"))
    assert synthetic and ntxent and total
    assert all(0 <= v <= 4 for v in synthetic)
    # The logged total is ntxent + lambda * synthetic, row by row.
    for row in rows:
        if row.get("train/loss"):
            assert float(row["train/loss"]) == pytest.approx(
                float(row["train/ntxent"]) + 0.5 * float(row["train/synthetic"]), rel=1e-5
            )
