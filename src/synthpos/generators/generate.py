"""Stage 2: fill a synthetic store with a registered generator's candidates, shard by shard.

The generator (``generate.kind``: ``clsp``, ``unclip``, ... see
:mod:`synthpos.generators.registry`) makes K candidates per anchor; this module owns the
rest. Shards are independent units of work: a resumed run does only the missing and
damaged ones (found by :mod:`synthpos.data.store_integrity`), and N processes
(``RANK``/``WORLD_SIZE`` as torchrun sets them) take every N-th shard of the same store. Every candidate's noise is seeded from (seed, anchor,
candidate), so the bytes do not depend on how the work was split.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthpos.config import GenerateConfig, RunConfig
from synthpos.data.store_integrity import ensure_verified, file_digest
from synthpos.data.synthetic_store import SyntheticStore, dataset_fingerprint
from synthpos.distributed import default_device, wait_for_launched_processes
from synthpos.errors import SynthposError
from synthpos.generators.clsp_generator import CLSPGenerator, generator_id
from synthpos.generators.registry import build_generator
from synthpos.progress import progress_bar
from synthpos.provenance import provenance as make_provenance
from synthpos.signals import sigterm_raises

__all__ = ["CLSPGenerator", "default_device", "generate_stage", "generate_store", "generator_id", "generator_record"]


def generator_record(generator_dir: Path, settings: GenerateConfig, seed: int, device: torch.device) -> dict[str, Any]:
    """What made a store's candidates (the generator's ``record()``); a store is only resumed or reused when this matches."""
    return build_generator(settings.kind, generator_dir, settings, seed, device).record()


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
    labels: np.ndarray | None = None,
    provenance: dict[str, Any] | None = None,
) -> SyntheticStore:
    """Generate (or finish) a store of synthetic positives for ``images`` with ``settings.kind``.

    Args:
        images: the anchors, uint8. Shape: (N, H, W, C). An array, or a streamed split's
            :class:`~synthpos.data.stream.LazyImages`: then one shard's anchors are decoded at a time.
        generator_dir: the generator's weights (for ``clsp``: a DDPMPipeline directory or ``builtin:NAME``).
        rank, world_size: this process's share (default: $RANK / $WORLD_SIZE, else 0 / 1).
        labels: the anchors' class labels (N,), for class-conditional generators.
        provenance: what a new store's manifest records as its maker (default: that of ``settings``;
            the stage passes the run config's). Never compared: see :mod:`synthpos.provenance`.

    Returns:
        The store. Under torchrun every process waits for the others at the end, so it is complete
        when this returns; with explicit ``rank``/``world_size`` only this process's shards are done.
    """
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    device = torch.device(device) if device is not None else default_device()
    generator = build_generator(settings.kind, generator_dir, settings, seed, device)
    generator.check_images(images)
    generator.prepare(images, labels, Path(store_path))
    store = SyntheticStore.create(
        store_path,
        dataset_fingerprint(dataset_name, split, images),
        candidates=settings.candidates,
        shard_size=settings.shard_size,
        generator=generator.record(),
        provenance=provenance if provenance is not None else make_provenance(settings),
        store_format=settings.store_format,
        quality=settings.store_quality,
    )
    # Which shards to (re)make: the missing and the damaged ones (hashed unless a stamp vouches for them).
    states = ensure_verified(store, settings.verify_store, raise_if_bad=False)
    old = [s for s in states if s.state == "no hash"]
    bad = [s.shard for s in states if s.bad]
    # Decided here, the same on every rank (all read one stamp; nobody folds before the barrier
    # below): then all or none of them enter the final verification's barrier.
    to_fold = bool(bad or old) or any(store.path.glob("shard-*.record.json"))
    if rank == 0:
        for state in states:
            if state.state in ("wrong size", "damaged"):
                print(f"{state.name} is damaged ({state.detail}): remaking it", file=sys.stderr)
        if old:
            print(f"adding hashes to {len(old)} shards written before stores recorded them", file=sys.stderr)
        for state in old:
            path = store.shard_path(state.shard)
            store.add_record(state.shard, {"bytes": path.stat().st_size, "sha256": file_digest(path)})
    todo = [s for s in bad if s % world_size == rank]
    total = sum(np.subtract(*store.layout.shard_range(s)[::-1]) for s in todo) * settings.candidates
    # SIGTERM stops at once: shards are written whole or not at all, a resumed run redoes only the missing ones.
    with progress_bar("generate", total=int(total), enabled=show_progress and rank == 0) as bar, sigterm_raises():
        for shard in todo:
            start, end = store.layout.shard_range(shard)
            shard_labels = None if labels is None else labels[start:end]
            # np.asarray: a streamed split decodes this shard's anchors only (an array's slice is a view).
            anchors = np.asarray(images[start:end])
            store.write_shard(shard, generator.generate(anchors, start, shard_labels, bar))
    wait_for_launched_processes("generate")
    if to_fold:
        if rank == 0:
            store.fold_records()
        # Once after writing: every shard read back and hashed (rank 0), the result stamped.
        after = ensure_verified(store, "always", raise_if_bad=False)
        if broken := [s for s in after if s.state in ("wrong size", "damaged")]:
            raise SynthposError(f"store {store.path}: {broken[0].name} reads back damaged right after it was written "
                                f"({broken[0].detail}); check the disk, then run `synthpos generate` again")
        store = SyntheticStore(store.path, SyntheticStore._read_manifest(store.path))  # with the folded records
    return store


def generate_stage(config: RunConfig, show_progress: bool = True) -> SyntheticStore:
    """Stage 2 from a run config: the run's training split and generator -> the run's store.

    The split is streamed or in memory as ``data.stream`` says (:func:`~synthpos.data.stream.open_dataset`).
    """
    from synthpos.data.stream import open_dataset

    dataset = open_dataset(config.data, "train")
    count = config.generate.num_anchors or len(dataset)
    if count > len(dataset):
        raise SynthposError(f"generate.num_anchors={count} but the training split has {len(dataset)} images")
    return generate_store(
        dataset.images[:count], dataset.name, dataset.split, config.generator_model,
        config.store_dir, config.generate, config.generation_seed, show_progress=show_progress,
        labels=None if dataset.labels is None else dataset.labels[:count], provenance=make_provenance(config),
    )
