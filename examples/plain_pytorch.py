"""Synthetic positives in a plain PyTorch training loop (SimCLR's NT-Xent, no Lightning).

A tiny store is made first: 16 random 28x28 grey images as anchors, 2 candidates each from
the DDPM shipped with synthpos (2 DDIM steps: quick, not good). With a real run, open its
store instead: ``SyntheticStore.open("runs/NAME/store")`` and pass the run's training images.

Each step contrasts an augmented view of the anchor with an augmented synthetic positive
(the ``replace`` idea of Ayromlou et al.: the second view comes from the generator).

    python examples/plain_pytorch.py [--steps N] [--work DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2 as T

from synthpos.config import GenerateConfig
from synthpos.data import SyntheticPositivesDataset
from synthpos.generators import generate_store
from synthpos.losses import NTXentLoss


def tiny_store(folder: Path, images: np.ndarray):
    """K=2 candidates per anchor from the shipped Fashion-MNIST DDPM (2 DDIM steps)."""
    settings = GenerateConfig(candidates=2, num_steps=2, shard_size=8, precision="fp32", channels_last=False)
    return generate_store(images, "random", "train", Path("builtin:fashion_mnist"), folder / "store", settings,
                          show_progress=False)


def main(steps: int = 4, work: Path | None = None) -> float:
    torch.manual_seed(0)
    work = Path(work or tempfile.mkdtemp(prefix="synthpos-example-"))
    images = np.random.default_rng(0).integers(0, 256, size=(16, 28, 28, 1), dtype=np.uint8)
    store = tiny_store(work, images)

    augment = T.Compose([T.RandomResizedCrop(28, scale=(0.3, 1.0), antialias=True), T.RandomHorizontalFlip()])
    # draw=1: one of the anchor's K candidates, drawn anew every time the anchor is seen.
    data = SyntheticPositivesDataset(store, images, transform=augment, draw=1)
    loader = DataLoader(data, batch_size=8, shuffle=True, drop_last=True)

    encoder = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 32))
    loss_fn = NTXentLoss(temperature=0.2)
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.1, momentum=0.9)
    step, loss = 0, torch.tensor(float("nan"))
    while step < steps:
        for batch in loader:
            real = batch["anchor"]                   # (B, 1, 28, 28) float32, augmented
            synthetic = batch["candidates"][:, 0]    # (B, 1, 28, 28): the drawn positive, augmented
            loss = loss_fn(encoder(real), encoder(synthetic))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            print(f"step {step}: loss {loss.item():.4f}")
            if step == steps:
                break
    return loss.item()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--work", type=Path, default=None, help="where the tiny store goes (default: a temp folder)")
    args = parser.parse_args()
    main(args.steps, args.work)
