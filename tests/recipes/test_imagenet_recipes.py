"""Every recipe in configs/imagenet/ runs end to end (generate, pretrain, evaluate) on a tree of JPEGs,
streamed, overridden only in size: 16 px images, batch 4, two steps, two candidates an anchor, a tiny
unCLIP and a tiny frozen scorer built here in code (tests/generators/test_unclip.py builds the unCLIP),
one linear-probe epoch, on the CPU."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from synthpos.config import load_config  # noqa: E402
from synthpos.pipeline import run_pipeline  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "configs" / "imagenet").glob("*.yaml"))
N = 8  # anchors: two batches of 4
SIZE = ["data.image_size=16", "data.stream=true", "data.num_workers=0",
        "pretrain.backbone={name: convnet, width: 4, cifar_stem: true}", "pretrain.projector_hidden_dim=16",
        "pretrain.projector_out_dim=8", "pretrain.predictor_hidden_dim=16", "pretrain.queue_size=8",
        "pretrain.batch_size=4", "pretrain.epochs=1", "pretrain.precision=fp32", "pretrain.accelerator=cpu",
        "pretrain.devices=1", "pretrain.sync_batchnorm=false", "pretrain.knn_every_epochs=0",
        "pretrain.channels_last=false", "pretrain.augment.crop_size=16", "pretrain.augment.blur_kernel_size=5",
        "pretrain.synthetic.scorer_fit_images=8", "pretrain.num_threads=1",
        "generate.shard_size=4", "generate.batch_size=4", "generate.precision=fp32", "generate.num_threads=1",
        "generate.candidates=2", "generate.unclip.adaptive_noise.fit_images=8",
        "evaluate.linear.epochs=1", "evaluate.linear.batch_size=4", "evaluate.knn_k=2", "evaluate.max_train=8"]


def _tiny_unclip(path: Path) -> Path:
    spec = importlib.util.spec_from_file_location("_tiny_unclip", ROOT / "tests" / "generators" / "test_unclip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_tiny_unclip(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, count in (("train", N), ("val", 4)):
        for i in range(count):
            folder = root / split / f"n0{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            y, x = np.mgrid[0:35, 0:40] / 40
            image = rng.uniform(0, 255, 3) * x[..., None] + rng.uniform(0, 255, 3) * y[..., None]
            out = io.BytesIO()
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=90)
            (folder / f"{i}.JPEG").write_bytes(out.getvalue())
    scorer = root / "scorer.pt"
    torch.jit.script(torch.nn.Conv2d(3, 4, 3, stride=2)).save(str(scorer))  # a frozen feature-map network for GenView
    return {"train": root / "train", "val": root / "val", "unclip": _tiny_unclip(root / "unclip"), "scorer": scorer}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_an_imagenet_recipe_runs_end_to_end(recipe: Path, world, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    config = load_config(recipe, [f"data.root={world['train']}", f"data.test_root={world['val']}",
                                  f"generate.generator={world['unclip']}", f"pretrain.synthetic.scorer={world['scorer']}",
                                  f"run_dir={tmp_path / 'run'}", *SIZE])
    try:
        run_pipeline(config, show_progress=False)
    finally:
        torch.set_num_threads(threads)
    summary = json.loads((config.pretrain_dir / "summary.json").read_text())
    assert summary["steps"] == N // 4
    assert (config.store_dir / "manifest.json").is_file()
    metrics = json.loads((config.run_dir / "evaluate" / "metrics.json").read_text())
    assert metrics, "evaluation wrote no metrics"
