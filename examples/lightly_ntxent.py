"""Synthetic positives with lightly: its SimCLR transforms, projection head and NTXentLoss.

A tiny store is made first: 16 random 28x28 grey images as anchors, 2 candidates each from
the DDPM shipped with synthpos (2 DDIM steps: quick, not good). With a real run, open its
store instead: ``SyntheticStore.open("runs/NAME/store")`` and pass the run's training images.

lightly's ``SimCLRTransform`` makes two views of the anchor; a candidate goes through one
``SimCLRViewTransform`` and is a third view. NT-Xent is taken between the two real views and
between the first real view and the synthetic one (SimCLR plus an extra synthetic positive).

    python examples/lightly_ntxent.py [--steps N] [--work DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform, SimCLRViewTransform
from torch import nn
from torch.utils.data import DataLoader

from synthpos.config import GenerateConfig
from synthpos.data import SyntheticPositivesDataset
from synthpos.generators import generate_store

# Grey images: no hue or saturation jitter, and the statistics of one channel.
VIEW = dict(input_size=28, min_scale=0.3, cj_sat=0.0, cj_hue=0.0, gaussian_blur=0.0,
            normalize={"mean": [0.5], "std": [0.5]})


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

    data = SyntheticPositivesDataset(
        store, images, draw=1,
        anchor_transform=SimCLRTransform(**VIEW),   # a list of two views of the real image
        transform=SimCLRViewTransform(**VIEW),      # one view of the drawn candidate
    )
    loader = DataLoader(data, batch_size=8, shuffle=True, drop_last=True)

    backbone = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = nn.Sequential(backbone, SimCLRProjectionHead(32, 64, 32))
    criterion = NTXentLoss(temperature=0.2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9)
    step, loss = 0, torch.tensor(float("nan"))
    while step < steps:
        for batch in loader:
            x0, x1 = batch["anchor"]                 # two (B, 1, 28, 28) views of the real images
            x_syn = batch["candidates"][:, 0]        # (B, 1, 28, 28): a view of a synthetic positive
            z0, z1, z_syn = model(x0), model(x1), model(x_syn)
            loss = criterion(z0, z1) + criterion(z0, z_syn)
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
