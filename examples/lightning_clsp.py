"""Synthetic positives in a Lightning module: CLSP-SimCLR (two real views + one synthetic view).

A tiny store is made first: 16 random 28x28 grey images as anchors, 2 candidates each from
the DDPM shipped with synthpos (2 DDIM steps: quick, not good). With a real run, open its
store instead: ``SyntheticStore.open("runs/NAME/store")`` and pass the run's training images.

The loss is synthpos's ``CLSPSimCLRLoss``: NT-Xent between the two real views plus
``weight * mean(2 - 2 cos(z_real, z_synthetic))``; the synthetic view is not a negative.

    python examples/lightning_clsp.py [--steps N] [--work DIR]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2 as T

from synthpos.config import GenerateConfig
from synthpos.data import SyntheticPositivesDataset
from synthpos.generators import generate_store
from synthpos.losses import CLSPSimCLRLoss

AUGMENT = T.Compose([T.RandomResizedCrop(28, scale=(0.3, 1.0), antialias=True), T.RandomHorizontalFlip(),
                     T.RandomApply([T.ColorJitter(0.4, 0.4)], p=0.8)])


def two_views(image: torch.Tensor) -> torch.Tensor:
    """Two augmented views of one real image. Shape: (C, H, W) -> (2, C, H, W)."""
    return torch.stack([AUGMENT(image), AUGMENT(image)])


def tiny_store(folder: Path, images: np.ndarray):
    """K=2 candidates per anchor from the shipped Fashion-MNIST DDPM (2 DDIM steps)."""
    settings = GenerateConfig(candidates=2, num_steps=2, shard_size=8, precision="fp32", channels_last=False)
    return generate_store(images, "random", "train", Path("builtin:fashion_mnist"), folder / "store", settings,
                          show_progress=False)


class CLSPSimCLR(L.LightningModule):
    """A small encoder and projector trained with CLSP's loss."""

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.projector = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))
        self.loss = CLSPSimCLRLoss(temperature=0.2, weight=weight)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        views = batch["anchor"]                      # (B, 2, 1, 28, 28): two views of each real image
        synthetic = batch["candidates"][:, 0]        # (B, 1, 28, 28): a view of one synthetic positive
        z1, z2, z3 = (self.projector(self.backbone(x)) for x in (views[:, 0], views[:, 1], synthetic))
        total, ntxent, term = self.loss(z1, z2, z3, return_parts=True)
        self.log_dict({"loss": total, "ntxent": ntxent, "synthetic": term}, prog_bar=True)
        return total

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def main(steps: int = 4, work: Path | None = None) -> float:
    L.seed_everything(0, verbose=False)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    work = Path(work or tempfile.mkdtemp(prefix="synthpos-example-"))
    images = np.random.default_rng(0).integers(0, 256, size=(16, 28, 28, 1), dtype=np.uint8)
    store = tiny_store(work, images)

    data = SyntheticPositivesDataset(store, images, draw=1, anchor_transform=two_views, transform=AUGMENT)
    loader = DataLoader(data, batch_size=8, shuffle=True, drop_last=True)
    model = CLSPSimCLR()
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", default_root_dir=work, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, loader)
    loss = float(trainer.callback_metrics["loss"])
    print(f"{trainer.global_step} steps: loss {loss:.4f}")
    return loss


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--work", type=Path, default=None, help="where the tiny store goes (default: a temp folder)")
    args = parser.parse_args()
    main(args.steps, args.work)
