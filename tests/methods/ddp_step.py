"""One optimisation step of several methods, on one process or under Lightning DDP.

Run by tests/methods/test_ddp_methods.py:

    python ddp_step.py WORLD OUT_DIR

With WORLD=1 each method takes one step on the whole batch; with WORLD=2 Lightning
launches a second process (DDP, gloo) and each rank takes the step on its half. Rank 0
writes the parameters after the step (and the MoCo queues) to OUT_DIR/<case>.pt.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from synthpos.config import AugmentConfig, BackboneConfig, OptimizerConfig, PretrainConfig, SyntheticConfig
from synthpos.data import ImageDataset
from synthpos.data.batch import PretrainBatch
from synthpos.distributed import convert_global_batchnorm
from synthpos.methods.pretrain import build_method

BATCH, SIZE = 16, 12
CASES = {
    "simclr": ("simclr", "none"),
    "clsp_simclr": ("simclr", "clsp"),
    "mocov2plus": ("mocov2plus", "none"),
    "barlow_twins": ("barlow_twins", "none"),
}


def _data() -> tuple[ImageDataset, PretrainBatch]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(BATCH, SIZE, SIZE, 1), dtype=np.uint8)
    dataset = ImageDataset("toy", "train", images, np.arange(BATCH) % 3, ["a", "b", "c"], (0.5,), (0.25,))
    batch = PretrainBatch(
        images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        synthetic=torch.from_numpy(rng.integers(0, 256, size=(BATCH, 1, SIZE, SIZE), dtype=np.uint8)),
        indices=torch.arange(BATCH),
        labels=torch.from_numpy(np.arange(BATCH) % 3),
    )
    return dataset, batch


def _config(method: str, mode: str) -> PretrainConfig:
    # Views are the images themselves (full crop, no jitter, flips or grey), so that both runs see the same
    # inputs; everything else is the real training path: backbone with BatchNorm, heads, loss, SGD, momentum.
    return PretrainConfig(
        method=method, synthetic=SyntheticConfig(mode=mode, weight=0.7),
        backbone=BackboneConfig(name="convnet", width=4), projector_hidden_dim=32, projector_out_dim=16,
        temperature=0.2, queue_size=64, batch_size=BATCH, channels_last=False, precision="fp32", sync_batchnorm=True,
        augment=AugmentConfig(crop_size=SIZE, crop_scale=(1.0, 1.0), jitter_prob=0, grayscale_prob=0, hflip_prob=0),
        optimizer=OptimizerConfig(name="sgd", lr=0.5, momentum=0.9, weight_decay=1e-4, warmup_epochs=0),
    )


def main(world: int, out_dir: Path) -> None:
    dataset, batch = _data()
    for case, (method_name, mode) in CASES.items():
        torch.manual_seed(0)  # the same initial weights (and MoCo queues) on every rank and in both runs
        method = build_method(_config(method_name, mode), dataset)
        if world > 1:
            method = convert_global_batchnorm(method)
        else:
            torch.save({k: v.detach().clone() for k, v in method.state_dict().items()}, out_dir / f"{case}.init.pt")
        trainer = L.Trainer(
            accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto", max_steps=1, precision="32-true",
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            use_distributed_sampler=False, num_sanity_val_steps=0,
        )
        rank, half = trainer.global_rank, BATCH // world
        mine = PretrainBatch(**{f.name: getattr(batch, f.name)[rank * half:(rank + 1) * half]
                                for f in dataclasses.fields(batch) if getattr(batch, f.name) is not None})
        trainer.fit(method, DataLoader([mine], batch_size=None))
        if trainer.is_global_zero:
            torch.save({k: v.detach().clone() for k, v in method.state_dict().items()}, out_dir / f"{case}.pt")
        trainer.strategy.barrier()


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
