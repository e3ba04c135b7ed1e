"""Shared fixtures for the generator tests: tiny random UNets and their schedules, and stores generated from them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from synthpos.config import GenerateConfig, TrainGeneratorConfig, UNetConfig
from synthpos.data.synthetic_store import SyntheticStore
from synthpos.generators.clsp import derive_seed
from synthpos.generators.diffusion import build_noise_scheduler, build_unet, save_pipeline
from synthpos.generators.generate import generate_store

TINY_UNET = UNetConfig(block_out_channels=[8, 16], attention_levels=[1], layers_per_block=1, dropout=0.0, norm_num_groups=4)


def make_tiny_unet(sample_size: int = 8, channels: int = 1, seed: int = 0) -> UNet2DModel:
    """A randomly initialised 2-level UNet2DModel with attention (level 1 and the middle block)."""
    torch.manual_seed(seed)
    return build_unet(TINY_UNET, sample_size=sample_size, channels=channels).eval().requires_grad_(False)


def make_noise_scheduler(num_train_timesteps: int, beta_end: float = 0.02) -> DDPMScheduler:
    """The generator's training schedule (linear betas from 1e-4).

    An untrained UNet's DDIM diverges when the schedule ends in near-pure noise, so
    comparisons use short schedules or a small ``beta_end`` to keep samples inside [-1, 1].
    """
    return build_noise_scheduler(TrainGeneratorConfig(num_train_timesteps=num_train_timesteps, beta_end=beta_end))


def row_generators(rows: Sequence[tuple[int, int]], seed: int = 0) -> list[torch.Generator]:
    """One CPU generator per (anchor, candidate) row, seeded the way generation seeds it."""
    return [torch.Generator().manual_seed(derive_seed(seed, a, c)) for a, c in rows]


@pytest.fixture(scope="session")
def tiny_unet() -> UNet2DModel:
    return make_tiny_unet()


@pytest.fixture
def unet_factory() -> Callable[..., UNet2DModel]:
    return make_tiny_unet


@pytest.fixture
def scheduler_factory() -> Callable[..., DDPMScheduler]:
    return make_noise_scheduler


@pytest.fixture
def make_generators() -> Callable[..., list[torch.Generator]]:
    return row_generators


@pytest.fixture(scope="session")
def anchors_model_range() -> torch.Tensor:
    """Four 1x8x8 anchors in [-1, 1]."""
    g = torch.Generator().manual_seed(123)
    return torch.rand(4, 1, 8, 8, generator=g) * 2 - 1


@pytest.fixture(scope="session")
def generator_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 8x8x1 DDPMPipeline directory (50 training timesteps) written by save_pipeline."""
    path = tmp_path_factory.mktemp("generator") / "gen"
    save_pipeline(make_tiny_unet(), make_noise_scheduler(50), path)
    return path


@pytest.fixture(scope="session")
def anchor_images() -> np.ndarray:
    """Ten random uint8 anchors. Shape: (10, 8, 8, 1)."""
    return np.random.default_rng(7).integers(0, 256, size=(10, 8, 8, 1), dtype=np.uint8)


# --- stores generated from the tiny generator (a test module sets ``generate_settings``) ----------------

@pytest.fixture(scope="module")
def generate_settings() -> GenerateConfig:
    """The generation settings of a module's stores; a module that generates overrides this fixture."""
    return GenerateConfig(candidates=2, num_steps=2, shard_size=4, batch_size=4, precision="fp32", channels_last=False)


@pytest.fixture(scope="module")
def generate(generate_settings: GenerateConfig) -> Callable[..., SyntheticStore]:
    """``generate(images, generator_dir, path, settings=None, **kwargs)``: ``generate_store`` of the toy anchors'
    dataset ("toy", "train") with seed 0 on the CPU, quietly; ``settings`` defaults to the module's."""

    def run(images, generator_dir, path, settings: GenerateConfig | None = None, **kwargs) -> SyntheticStore:
        return generate_store(images, "toy", "train", generator_dir, path, settings or generate_settings, seed=0,
                              device="cpu", show_progress=False, **kwargs)

    return run


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory: pytest.TempPathFactory, anchor_images, generator_dir, generate) -> Path:
    """One uninterrupted single-process run over the ten anchors with the module's settings."""
    path = tmp_path_factory.mktemp("reference") / "store"
    generate(anchor_images, generator_dir, path)
    return path


@pytest.fixture
def count_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The shards ``SyntheticStore.write_shard`` writes while the test runs, in order."""
    written: list[int] = []
    original = SyntheticStore.write_shard

    def counting(self, shard, candidates):
        written.append(shard)
        return original(self, shard, candidates)

    monkeypatch.setattr(SyntheticStore, "write_shard", counting)
    return written
