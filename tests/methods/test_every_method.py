"""Every method trains end to end in every synthetic mode it supports, from the config to backbone.pt.

Real Fashion-MNIST images, a store of real candidates (the anchors, perturbed: no diffusion
needed to test the training path), tiny ConvNet, two optimisation steps per run. The CLI
runs a few of them as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from synthpos.config import BackboneConfig, load_config
from synthpos.data import load_dataset
from synthpos.data.synthetic_store import SyntheticStore, dataset_fingerprint
from synthpos.methods.pretrain import pretrain_stage
from synthpos.models.backbones import build_backbone, load_backbone, save_backbone
from synthpos.registry import METHODS, MODES

FMNIST = Path("/usr/share/datasets/fashion-mnist")
SCRIPT = Path(sys.executable).parent / "synthpos"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed"),
]
SUBSET, K = 64, 3

# Every built-in method with every built-in mode it declares (and those that work with every
# method). Components a test module registers for its own run (test_contracts' scratch ones)
# are left out: they may be gone again by the time these cases run.
def _builtin(component: type) -> bool:
    return component.__module__.startswith("synthpos.")


CASES = [(name, mode) for name, method in METHODS.items() if _builtin(method) for mode, m in MODES.items()
         if _builtin(m) and (m.for_every_method or mode in method.modes)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of K perturbed copies of each anchor, and a scorer backbone for quality mode."""
    root = tmp_path_factory.mktemp("every_method")
    config = load_config(None, [f"data.subset={SUBSET}"])
    dataset = load_dataset(config.data, "train")
    store = SyntheticStore.create(root / "store", dataset_fingerprint(dataset.name, dataset.split, dataset.images),
                                  candidates=K, shard_size=32, generator={"kind": "test"})
    rng = np.random.default_rng(0)
    noisy = dataset.images[:, None].astype(np.int16) + rng.integers(-40, 40, size=(SUBSET, K, 28, 28, 1))
    candidates = np.clip(noisy, 0, 255).astype(np.uint8)
    for s in range(store.layout.num_shards):
        start, end = store.layout.shard_range(s)
        store.write_shard(s, candidates[start:end])
    torch.manual_seed(0)
    spec = BackboneConfig(name="convnet", width=4)
    save_backbone(build_backbone(spec, 1), spec, 1, root / "scorer" / "backbone.pt")
    return root


def _overrides(root: Path, method: str, mode: str) -> list[str]:
    return [
        f"run_dir={root / f'{method}_{mode}'}", f"data.subset={SUBSET}", f"pretrain.store={root / 'store'}",
        f"pretrain.method={method}", f"pretrain.synthetic.mode={mode}", "pretrain.synthetic.replace_prob=0.5",
        "pretrain.synthetic.positives=2", f"pretrain.synthetic.scorer={root / 'scorer' / 'backbone.pt'}",
        "pretrain.synthetic.scorer_fit_images=32",
        "pretrain.backbone.name=convnet", "pretrain.backbone.width=4",
        "pretrain.projector_hidden_dim=32", "pretrain.projector_out_dim=16", "pretrain.predictor_hidden_dim=32",
        "pretrain.queue_size=64", "pretrain.batch_size=32", "pretrain.epochs=1", "pretrain.precision=fp32",
        "pretrain.augment.crop_size=28", "pretrain.optimizer.warmup_epochs=0", "pretrain.accelerator=cpu",
        "pretrain.channels_last=false",
    ]


@pytest.mark.parametrize(("method", "mode"), CASES, ids=[f"{m}-{mode}" for m, mode in CASES])
def test_method_trains_in_mode(workspace: Path, method: str, mode: str) -> None:
    config = load_config(None, _overrides(workspace, method, mode))
    torch.manual_seed(0)
    before = build_backbone(config.pretrain.backbone, 1).state_dict()
    path = pretrain_stage(config, show_progress=False)
    summary = json.loads((config.pretrain_dir / "summary.json").read_text())
    assert summary["steps"] == SUBSET // 32
    backbone = load_backbone(path)
    after = backbone.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))  # it learned something


def _synthpos(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(("method", "mode"), [("byol", "clsp"), ("mocov2plus", "replace"), ("supcon", "multipos")])
def test_cli_pretrains_each_kind_of_method(workspace: Path, method: str, mode: str) -> None:
    overrides = _overrides(workspace, f"cli_{method}", mode) + [f"pretrain.method={method}"]
    result = _synthpos("pretrain", "--quiet", *[a for o in overrides for a in ("--set", o)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "backbone written to" in result.stderr
    assert (workspace / f"cli_{method}_{mode}" / "pretrain" / "backbone.pt").is_file()


def test_supervised_method_on_unlabelled_data_is_one_clear_error(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(40):
        Image.fromarray(np.full((8, 8, 3), i * 5, dtype=np.uint8)).save(folder / f"{i}.png")
    result = _synthpos("pretrain", "--set", "data.name=image_folder", "--set", f"data.root={folder}",
                       "--set", "pretrain.method=supcon", "--set", f"run_dir={tmp_path / 'run'}", "--set", "pretrain.batch_size=8")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "supervised" in lines[0] and "no labels" in lines[0], result.stderr
    assert not (tmp_path / "run").exists()
