"""Stage 2: fill a synthetic store with CLSP positives, shard by shard.

Shards are independent units of work: a resumed run does only the missing ones,
and N processes (``RANK``/``WORLD_SIZE`` as torchrun sets them) take every N-th
shard of the same store. Every candidate's noise is seeded from (seed, anchor,
candidate), so the bytes do not depend on how the work was split.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from diffusers import SchedulerMixin, UNet2DModel

from synthpos.config import GenerateConfig, RunConfig
from synthpos.data.synthetic_store import SyntheticStore, dataset_fingerprint
from synthpos.errors import SynthposError
from synthpos.generators.clsp import clsp_interpolation_sample, ddim_scheduler, derive_seed
from synthpos.generators.diffusion import images_to_model_range, load_generator, model_range_to_images, resolve_generator_dir
from synthpos.precision import resolve_precision
from synthpos.progress import progress_bar


def generator_id(generator_dir: Path) -> str:
    """SHA-256 of the UNet weights and the noise schedule: the store records which generator made it."""
    digest = hashlib.sha256()
    for path in sorted((generator_dir / "unet").glob("diffusion_pytorch_model.*")):
        digest.update(path.read_bytes())
    digest.update((generator_dir / "scheduler" / "scheduler_config.json").read_bytes())
    return digest.hexdigest()[:16]


def default_device() -> torch.device:
    """This process's GPU (``LOCAL_RANK`` under torchrun), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def generator_record(generator_dir: Path, settings: GenerateConfig, seed: int, device: torch.device) -> dict:
    """What made a store's candidates; a store is only resumed or reused when this matches."""
    return {
        "kind": "clsp_ddim_interpolation",
        "generator_sha256": generator_id(resolve_generator_dir(generator_dir)),
        "num_steps": settings.num_steps,
        "eta": settings.eta,
        "interpolation_weight": settings.interpolation_weight,
        "clip_x0": settings.clip_x0,
        "precision": resolve_precision(settings.precision, device),
        "seed": seed,
    }


def generate_shard(
    unet: UNet2DModel,
    noise_scheduler: SchedulerMixin,
    anchors: np.ndarray,
    first_index: int,
    settings: GenerateConfig,
    seed: int,
    device: torch.device,
    bar=None,
) -> np.ndarray:
    """K candidates for each of ``anchors`` (uint8 (n, H, W, C)) -> uint8 (n, K, H, W, C)."""
    k = settings.candidates
    n = len(anchors)
    scheduler = ddim_scheduler(noise_scheduler, clip_x0=settings.clip_x0)
    precision = resolve_precision(settings.precision, device)
    rows = [(a, c) for a in range(n) for c in range(k)]
    out = np.empty((n, k, *anchors.shape[1:]), dtype=np.uint8)
    anchor_tensor = images_to_model_range(torch.from_numpy(np.ascontiguousarray(anchors)))
    for begin in range(0, len(rows), settings.batch_size):
        chunk = rows[begin: begin + settings.batch_size]
        which = torch.tensor([a for a, _ in chunk])
        batch = anchor_tensor[which].to(device)
        if settings.channels_last and batch.shape[1] > 1:
            batch = batch.contiguous(memory_format=torch.channels_last)
        generators = [torch.Generator().manual_seed(derive_seed(seed, first_index + a, c)) for a, c in chunk]
        samples = clsp_interpolation_sample(
            unet, scheduler, batch, generators,
            num_steps=settings.num_steps, eta=settings.eta, weight=settings.interpolation_weight, precision=precision,
        )
        images = model_range_to_images(samples.cpu()).numpy()
        for (a, c), image in zip(chunk, images):
            out[a, c] = image
        if bar is not None:
            bar.update(len(chunk))
    return out


def generate_store(
    images: np.ndarray,
    dataset_name: str,
    split: str,
    generator_dir: Path,
    store_path: Path,
    settings: GenerateConfig,
    seed: int = 0,
    device: str | torch.device | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    show_progress: bool = True,
) -> SyntheticStore:
    """Generate (or finish) a store of CLSP positives for ``images``.

    Args:
        images: the anchors, uint8. Shape: (N, H, W, C).
        generator_dir: a DDPMPipeline directory (or ``builtin:NAME``).
        rank, world_size: this process's share (default: $RANK / $WORLD_SIZE, else 0 / 1).

    Returns:
        The store; complete when every process has finished.
    """
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    device = torch.device(device) if device is not None else default_device()
    generator_dir = resolve_generator_dir(generator_dir)
    unet, noise_scheduler = load_generator(generator_dir)
    channels, size = unet.config.in_channels, unet.config.sample_size
    if images.shape[1:] != (size, size, channels):
        raise SynthposError(
            f"the generator makes {size}x{size}x{channels} images but the data is {'x'.join(map(str, images.shape[1:]))}; "
            "set data.image_size (or use a generator trained on this data)"
        )
    unet = unet.to(device)
    if settings.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    store = SyntheticStore.create(
        store_path,
        dataset_fingerprint(dataset_name, split, images),
        candidates=settings.candidates,
        shard_size=settings.shard_size,
        generator=generator_record(generator_dir, settings, seed, device),
    )
    todo = [s for s in store.missing_shards() if s % world_size == rank]
    total = sum(np.subtract(*store.layout.shard_range(s)[::-1]) for s in todo) * settings.candidates
    with progress_bar("generate", total=int(total), enabled=show_progress and rank == 0) as bar:
        for shard in todo:
            start, end = store.layout.shard_range(shard)
            store.write_shard(shard, generate_shard(unet, noise_scheduler, images[start:end], start, settings, seed, device, bar))
    return store


def generate_stage(config: RunConfig, show_progress: bool = True) -> SyntheticStore:
    """Stage 2 from a run config: the run's training split and generator -> the run's store."""
    from synthpos.data import load_dataset

    dataset = load_dataset(config.data, "train")
    count = config.generate.num_anchors or len(dataset)
    if count > len(dataset):
        raise SynthposError(f"generate.num_anchors={count} but the training split has {len(dataset)} images")
    return generate_store(
        dataset.images[:count], dataset.name, dataset.split, config.generator_model,
        config.store_dir, config.generate, config.seed, show_progress=show_progress,
    )
