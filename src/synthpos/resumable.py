"""Resumable pretraining: atomic checkpoints on an epoch and time cadence and on SIGTERM, and a
data order that a resumed run continues exactly, also from the middle of an epoch.

What a checkpoint must hold for a resumed run on the CPU to equal an uninterrupted one bit for
bit: the weights, optimiser and schedule (Lightning's own checkpoint), the position in the
epoch's batch order (:class:`ResumableBatchSampler`), and the random state of the training
step (augmentations draw from torch's global generator). The data side draws its candidate
choices from a generator seeded by (seed, epoch, batch), so it needs no state of its own.

A checkpoint is taken at a clean point only: at the start of the batch after the one that
triggered it (Lightning calls callbacks' ``on_train_batch_end`` before the method's own, where
momentum encoders update), at the end of training, or when Lightning stops for SIGTERM.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import Sampler

from synthpos.atomic import atomic_path, fsync_dir
from synthpos.errors import SynthposError

LAST = "last.ckpt"
PREVIOUS = "previous.ckpt"


class KeyedBatch(list):
    """A batch of dataset indices that knows where it is in the run: ``key = (epoch, batch)``.

    The DataLoader hands it as it is to the dataset's ``__getitems__``, which seeds its
    draws from the key, so a batch's random choices do not depend on what came before.
    """

    def __init__(self, indices: list[int], key: tuple[int, int]) -> None:
        super().__init__(indices)
        self.key = key


class ResumableBatchSampler(Sampler[list[int]]):
    """Shuffled, equal-sized batches that a checkpoint can resume mid-epoch, split over ranks.

    Like ``RandomSampler`` + ``drop_last`` (and ``DistributedSampler`` on several ranks): each
    epoch a permutation seeded by one draw from the global generator (kept in the checkpoint
    as ``epoch_seed``); rank r of W takes every W-th index; the rank's share is cut into
    ``batch_size`` batches (the rest dropped). :meth:`resume_at` makes the next pass over
    ``epoch`` start at batch ``position``.

    Args:
        num_samples: dataset size.
        batch_size: per-process batch size.
        seed: the run's seed.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int) -> None:
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.epoch = 0
        self._resume: tuple[int, int] | None = None
        self.epoch_seed: int | None = None  # the permutation seed of the epoch in progress

    @staticmethod
    def _world() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    @property
    def sampler(self) -> ResumableBatchSampler:
        # Lightning calls set_epoch on ``loader.batch_sampler.sampler`` at every epoch start.
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, position: int) -> None:
        self._resume = (epoch, position)

    def __len__(self) -> int:
        world, _ = self._world()
        return (self.num_samples // world) // self.batch_size

    def __iter__(self):
        world, rank = self._world()
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch and self.epoch_seed is not None:
            start = self._resume[1]  # the epoch's permutation comes from the checkpoint's seed
        else:
            # As torch's RandomSampler: the epoch's permutation seed is one draw from the global
            # generator (seeded by the run; restored on resume), so training sees the batches an
            # ordinary shuffled DataLoader would. Under DDP every rank draws the same value.
            self.epoch_seed = int(torch.empty((), dtype=torch.int64).random_().item())
        self._resume = None
        order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.epoch_seed))
        per_rank = self.num_samples // world
        mine = order[rank: per_rank * world: world].tolist()
        for b in range(start, per_rank // self.batch_size):
            yield KeyedBatch(mine[b * self.batch_size: (b + 1) * self.batch_size], (self.epoch, b))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary file, fsynced, then renamed into place; the
    checkpoint it replaces is kept as ``previous.ckpt`` (the fallback if ``last.ckpt`` is damaged)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, fsync=True) as tmp:
            torch.save(checkpoint, tmp)
            if path.name == LAST and path.exists():
                os.replace(path, path.with_name(PREVIOUS))
        fsync_dir(path.parent)


def _rng_state() -> dict[str, Any]:
    # Plain types and tensors only: Lightning reads checkpoints with torch.load(weights_only=True).
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached": float(cached)}
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumableCheckpoint(L.Callback):
    """Writes ``<dir>/last.ckpt`` every ``every_epochs`` epochs, every ``every_minutes`` minutes,
    at the end of training and on SIGTERM; restores the data position and random state on resume.

    Add it last, after callbacks that use random numbers at epoch ends.
    """

    def __init__(self, dirpath: Path, sampler: ResumableBatchSampler, every_epochs: int = 1,
                 every_minutes: float | None = 5.0) -> None:
        self.dirpath = Path(dirpath)
        self.sampler = sampler
        self.every_epochs = every_epochs
        self.every_minutes = every_minutes
        self._pending = False
        self._last_save = time.monotonic()
        self._restore: dict[str, Any] | None = None
        self.saved_steps: list[int] = []

    @property
    def state_key(self) -> str:
        return "ResumableCheckpoint"

    # --- what goes into the checkpoint -----------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        return {
            "epoch": trainer.current_epoch,
            "position": trainer.fit_loop.epoch_loop.batch_progress.current.completed,
            "global_step": trainer.global_step,
            "epoch_seed": self.sampler.epoch_seed,
            "rng": _rng_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restore = state_dict
        # The loader's first pass starts before Lightning sets the epoch: set it here.
        self.sampler.set_epoch(state_dict["epoch"])
        self.sampler.epoch_seed = state_dict.get("epoch_seed")
        # A checkpoint at the end of training (or of an epoch) is at the start of the next epoch.
        position = state_dict["position"] if state_dict["position"] < len(self.sampler) else 0
        self.sampler.resume_at(state_dict["epoch"], position)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    # --- when to save ----------------------------------------------------------------------

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.dirpath / LAST)
        self.saved_steps.append(trainer.global_step)
        self._last_save = time.monotonic()
        self._pending = False

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._restore is not None:
            # The random state of the step after the checkpoint; nothing between the restore
            # and here draws from it (the data side has its own generators).
            _set_rng_state(self._restore["rng"])
            self._restore = None
        if self._pending:
            self._save(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        due = self.every_minutes is not None and time.monotonic() - self._last_save >= 60 * self.every_minutes
        if trainer.world_size > 1:
            due = trainer.strategy.broadcast(due, src=0)  # every rank must take part in a save
        self._pending = self._pending or due

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_epochs == 0:
            self._pending = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        # Lightning stops for SIGTERM between batches, after the method's own batch-end hooks.
        if isinstance(exception, SIGTERMException):
            self._save(trainer)


def usable_checkpoint(dirpath: Path, say=print) -> tuple[Path, int] | None:
    """The checkpoint to resume from and its step: ``last.ckpt``, or ``previous.ckpt`` if the last cannot be read.

    Raises:
        SynthposError: checkpoints exist but none can be read.
    """
    dirpath = Path(dirpath)
    candidates = [p for p in (dirpath / LAST, dirpath / PREVIOUS) if p.is_file()]
    errors = []
    for path in candidates:
        try:
            step = int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])
        except Exception as err:  # noqa: BLE001 - a truncated file fails in pickle, zipfile or torch
            errors.append(f"{path.name}: {type(err).__name__}")
            continue
        if errors:
            say(f"{dirpath / LAST} cannot be read ({errors[0]}); resuming from {path} instead")
        return path, step
    if errors:
        raise SynthposError(
            f"no readable checkpoint in {dirpath} ({'; '.join(errors)}); delete that folder to start this stage over"
        )
    return None
