"""Each paper family trains end to end from its own recipe file, shrunk with --set overrides:
CLSP (SimCLR, MoCo v2+) on CIFAR-10 files written here with a CLSP-layout .npy imported as the
store; Ayromlou et al. (replace mode) and GenView (quality mode) on an image folder with an
imported JPEG tree. Narrow backbone, one epoch of two steps, CPU."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthpos.config import load_config
from synthpos.data.import_store import import_store_stage
from synthpos.methods.pretrain import pretrain_stage

ROOT = Path(__file__).resolve().parents[2]
N = 16
TINY = ["pretrain.backbone={name: convnet, width: 4, cifar_stem: true}", "pretrain.projector_hidden_dim=16",
        "pretrain.projector_out_dim=8", "pretrain.predictor_hidden_dim=16", "pretrain.queue_size=16",
        "pretrain.batch_size=8", "pretrain.epochs=1", "pretrain.precision=fp32", "pretrain.accelerator=cpu",
        "pretrain.devices=1", "pretrain.sync_batchnorm=false", "pretrain.knn_every_epochs=0",
        "pretrain.channels_last=false", "pretrain.optimizer.warmup_epochs=0", "generate.shard_size=8"]


def _cifar(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        with (folder / f"data_batch_{i}").open("wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (N // 4 if i < 5 else 0, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, N // 4 if i < 5 else 0).tolist()}, f)
    with (folder / "test_batch").open("wb") as f:
        pickle.dump({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}, f)
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return root


def _folder(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    train, synthetic = root / "train", root / "synthetic"
    for c in ("n01", "n02"):
        for n in range(N // 2):
            (train / c).mkdir(parents=True, exist_ok=True)
            (synthetic / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(train / c / f"{c}_{n}.JPEG")
            for k in range(2):
                Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(synthetic / c / f"{c}_{n}_{k}.JPEG")
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(synthetic / c / f"{c}_{n}.JPEG")
    return train, synthetic


def _steps(config) -> int:
    pretrain_stage(config, show_progress=False)
    return json.loads((config.pretrain_dir / "summary.json").read_text())["steps"]


@pytest.mark.parametrize("recipe", ["configs/cifar10/clsp_simclr.yaml", "configs/cifar10/clsp_mocov2plus.yaml"])
def test_clsp_family_trains_on_an_imported_clsp_array(recipe: str, tmp_path: Path) -> None:
    data = _cifar(tmp_path / "cifar")
    np.save(tmp_path / "synthetic.npy", np.random.default_rng(2).integers(0, 256, (N, 8, 32, 32, 3), dtype=np.uint8))
    config = load_config(ROOT / recipe, [f"data.root={data}", f"run_dir={tmp_path / 'run'}", *TINY])
    import_store_stage(config, tmp_path / "synthetic.npy", "clsp", None, 10, show_progress=False)
    assert _steps(config) == 2


# Their SimCLR loader (each view replaced, no crop on a synthetic view) and GenView's SimSiam (fixed predictor lr).
_SIMCLR_LOADER = ["pretrain.synthetic.replace_view=each", "pretrain.synthetic.crop_synthetic=false"]


@pytest.mark.parametrize(("recipe", "layout", "extra"), [
    ("configs/imagenet/generativessl_byol.yaml", "generativessl", []),
    ("configs/imagenet/generativessl_simclr.yaml", "generativessl", _SIMCLR_LOADER),
    ("configs/imagenet/genview_mocov3.yaml", "genview", []),
    ("configs/imagenet/genview_simsiam.yaml", "genview", []),
])
def test_unclip_families_train_on_an_imported_tree(recipe: str, layout: str, extra: list[str], tmp_path: Path) -> None:
    train, synthetic = _folder(tmp_path / "images")
    scorer = tmp_path / "scorer.pt"
    torch.jit.script(torch.nn.Conv2d(3, 4, 3, stride=2)).save(str(scorer))  # a frozen feature-map network for GenView
    config = load_config(ROOT / recipe, [f"data.root={train}", f"data.test_root={train}", "data.image_size=16",
                                         f"run_dir={tmp_path / 'run'}", "pretrain.augment.crop_size=16",
                                         "pretrain.augment.blur_kernel_size=5", f"pretrain.synthetic.scorer={scorer}",
                                         "pretrain.synthetic.scorer_fit_images=8", *TINY, *extra])
    store = import_store_stage(config, synthetic, layout, None, 2, show_progress=False)
    assert store.candidates == (2 if layout == "generativessl" else 1)
    assert _steps(config) == 2
