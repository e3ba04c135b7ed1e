"""The rank split of the streaming path in a real two-process gloo run on CPU.

Each rank reads a streamed split through the pretraining loader (ResumableBatchSampler +
EpochLoader, one worker process) for two epochs and writes what it got; the parent checks:
every sample exactly once per epoch when the data divides by world x batch; otherwise the
remainder dropped (as ``DistributedSampler(drop_last=True)``), no sample twice; every rank the
same number of batches; the pixels those of the in-memory reference.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from synthpos.config import DataConfig
from synthpos.data.stream import EpochLoader, is_streamed, open_dataset
from synthpos.methods.pretrain import PretrainBatches, _first
from synthpos.resumable import ResumableBatchSampler

WORLD, BATCH, EPOCHS = 2, 4, 2  # per-rank batch 4: a global batch of 8


def _digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()[:12]


def _configs(root: Path) -> dict[str, DataConfig]:
    # 24 images divide by 2 x 4; 27 do not (3 dropped a epoch). The second is the tar-shard source.
    return {"divisible": DataConfig(name="image_folder", root=root / "folder", image_size=8, stream=True),
            "remainder": DataConfig(name="webdataset", root=root / "shards", image_size=8, stream=True)}


def _rank(rank: int, root: str, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        out = {}
        for name, config in _configs(Path(root)).items():
            dataset = open_dataset(config, "train")
            assert is_streamed(dataset)
            torch.manual_seed(0)  # as seed_everything on every rank: the same epoch permutation everywhere
            sampler = ResumableBatchSampler(len(dataset), BATCH, seed=0)
            loader = EpochLoader(PretrainBatches(dataset, None, 0, "none"), batch_sampler=sampler, collate_fn=_first,
                                 num_workers=1, persistent_workers=True)
            epochs = []
            for epoch in range(EPOCHS):
                sampler.set_epoch(epoch)
                epochs.append([(b.indices.tolist(), [_digest(im.permute(1, 2, 0).numpy()) for im in b.images])
                               for b in loader])
            out[name] = {"epochs": epochs, "len": len(loader)}
        torch.save(out, os.path.join(root, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_ranks_split_a_streamed_epoch(tmp_path: Path) -> None:
    from test_stream import shards_like, write_jpeg_folder

    from synthpos.data import load_dataset

    write_jpeg_folder(tmp_path / "folder", per_class=8)  # 24
    files = write_jpeg_folder(tmp_path / "more", per_class=9, seed=1)  # 27
    shards_like(tmp_path / "shards", files, np.repeat(np.arange(3), 9), per_shard=5)
    # fork: the ranks inherit the imported modules (a spawned rank re-imports Lightning, ~10 s on 2 busy cores).
    mp.start_processes(_rank, args=(str(tmp_path), str(tmp_path / "init")), nprocs=WORLD, join=True, start_method="fork")
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]

    for name, config in _configs(tmp_path).items():
        memory = load_dataset(config.model_copy(update={"stream": False}), "train")
        n = len(memory)
        reference = [_digest(im) for im in memory.images]
        per_rank_batches = (n // WORLD) // BATCH
        for epoch in range(EPOCHS):
            seen: list[int] = []
            for r in results:
                batches = r[name]["epochs"][epoch]
                # Every rank the same number of batches (one that ran out first would hang DDP), as len() says.
                assert len(batches) == r[name]["len"] == per_rank_batches
                for indices, digests in batches:
                    assert len(indices) == BATCH
                    assert digests == [reference[i] for i in indices]  # decoded in a worker = the in-memory pixels
                    seen += indices
            assert len(seen) == len(set(seen)), f"{name} epoch {epoch}: a sample read twice"
            if name == "divisible":
                assert sorted(seen) == list(range(n))
            else:
                assert len(seen) == n - n % (WORLD * BATCH) == 24  # the remainder is dropped, not padded
        orders = [[i for r in results for b in r[name]["epochs"][e] for i in b[0]] for e in range(EPOCHS)]
        assert orders[0] != orders[1]  # a new permutation each epoch
