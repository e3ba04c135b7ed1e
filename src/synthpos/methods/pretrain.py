"""Stage 3: pretraining with Lightning, with or without synthetic positives.

Lightning, and the callbacks and checkpointing built on it, are imported when training starts,
not with this module: the method registry reads every module of this package when a config is
read, and reading a config stays light.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from synthpos.config import PretrainConfig, RunConfig, SyntheticConfig, dump_config
from synthpos.data import BatchAugment, ImageDataset
from synthpos.data.batch import PretrainBatch
from synthpos.data.stream import EpochLoader, bounded_sample, loader_workers, open_dataset
from synthpos.data.synthetic_store import SyntheticStore
from synthpos.distributed import convert_global_batchnorm
from synthpos.errors import SynthposError
from synthpos.loggers import build_loggers, check_loggers, finish_loggers, log_hyperparameters
from synthpos.methods import SSLMethod, method_class
from synthpos.methods.training import lightning_class
from synthpos.models.backbones import build_backbone, save_backbone
from synthpos.modes.base import SyntheticMode
from synthpos.registry import MODES
from synthpos.precision import resolve_precision
from synthpos.provenance import provenance as make_provenance
from synthpos.signals import Terminated

#: Lightning callbacks this module uses, imported on first use (module attributes all the same: tests replace them)
_CALLBACKS = {"KNNMonitor": "synthpos.evaluation.monitor", "OnlineLinearProbe": "synthpos.evaluation.online_probe"}


def __getattr__(name: str) -> Any:
    if name not in _CALLBACKS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_CALLBACKS[name]), name)
    globals()[name] = value
    return value


class PretrainBatches(Dataset):
    """Anchor indices -> one :class:`~synthpos.data.batch.PretrainBatch`, fetched whole (``__getitems__``).

    Fetching a batch is one fancy-index into the in-memory images (and one read per
    store shard), so a small model's step never waits for per-image Python work, and
    no worker processes are needed to steal the cores the model needs.

    What the batch carries from the store is the synthetic mode's choice
    (:meth:`synthpos.modes.base.SyntheticMode.fill`), drawn anew every time an anchor is seen.

    Args:
        dataset: the training images.
        store: the synthetic store, or None (the batch then holds the real images only).
        seed: seed of the draws from the store.
        mode: the synthetic mode (an instance, its config, or its name with ``settings``).
        **settings: ``SyntheticConfig`` fields when ``mode`` is a name (``replace_prob=1.0``).
    """

    def __init__(
        self,
        dataset: ImageDataset,
        store: SyntheticStore | None = None,
        seed: int = 0,
        mode: SyntheticMode | SyntheticConfig | str = "clsp",
        **settings: Any,
    ) -> None:
        if isinstance(mode, str):
            mode = SyntheticConfig(mode=mode, **settings)
        if isinstance(mode, SyntheticConfig):
            mode = MODES.get(mode.mode)(mode)
        self.dataset, self.store, self.mode = dataset, store, mode
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        if store is not None:
            mode.check_store(store)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> PretrainBatch:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> PretrainBatch:
        # A batch from ResumableBatchSampler carries its (epoch, batch): its draws are seeded by
        # it, so a run resumed mid-epoch draws what an uninterrupted one would.
        key = getattr(indices, "key", None)
        rng = self.rng if key is None else np.random.default_rng([self.seed, *key])
        idx = np.asarray(indices, dtype=np.int64)
        images, labels = self.dataset.batch(idx)
        batch = PretrainBatch(indices=torch.from_numpy(idx), images=images, labels=labels)
        if self.store is not None:
            self.mode.fill(batch, self.store, rng)
        return batch


def _first(batch):
    return batch


def build_augment(cfg: PretrainConfig, dataset: ImageDataset) -> BatchAugment:
    return BatchAugment.from_settings(cfg.augment, dataset.mean, dataset.std)


def check_method(cfg: PretrainConfig, dataset: ImageDataset) -> type[SSLMethod]:
    """The method's class, once it is known to work on ``dataset``.

    Raises:
        SynthposError: a supervised method on unlabelled data.
    """
    cls = method_class(cfg.method)
    if cls.needs_labels and dataset.labels is None:
        raise SynthposError(f"pretrain.method={cfg.method} is supervised but {dataset.name} has no labels; "
                            "use a labelled dataset or a self-supervised method")
    return cls


def build_method(cfg: PretrainConfig, dataset: ImageDataset, seed: int = 0) -> SSLMethod:
    """The configured method, with its backbone, augmentation and (quality mode) fitted scorer,
    as a ``LightningModule`` (:func:`~synthpos.methods.training.lightning_class`).

    Raises:
        SynthposError: a supervised method on unlabelled data; a scorer that cannot be used.
    """
    cls = check_method(cfg, dataset)
    augment = build_augment(cfg, dataset)
    scorer = MODES.get(cfg.synthetic.mode).frozen_model(cfg, dataset, seed)
    backbone = build_backbone(cfg.backbone, dataset.channels)
    return lightning_class(cls)(backbone, augment, cfg, scorer)


def check_batch_size(cfg: PretrainConfig, num_images: int) -> tuple[str, int]:
    """The accelerator and the number of processes; the global batch must split evenly over them
    and fit in the data (``drop_last``: a smaller set would give no step at all).

    Raises:
        SynthposError: the batch does not divide over the devices or is larger than the data.
    """
    accelerator = cfg.accelerator if cfg.accelerator != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    n_devices = (torch.cuda.device_count() if accelerator == "gpu" else 1) if cfg.devices == "auto" else cfg.devices
    world = max(1, n_devices) * cfg.num_nodes
    if cfg.batch_size % world:
        raise SynthposError(
            f"pretrain.batch_size={cfg.batch_size} must divide evenly over {world} devices; set it to a multiple of {world}"
        )
    if cfg.batch_size > num_images:
        raise SynthposError(
            f"pretrain.batch_size={cfg.batch_size} is larger than the dataset ({num_images} images); "
            "lower pretrain.batch_size or use more data (data.subset)"
        )
    return accelerator, world


def pretrain(
    cfg: PretrainConfig,
    dataset: ImageDataset,
    output_dir: Path,
    store: SyntheticStore | None = None,
    monitor_data: ImageDataset | None = None,
    seed: int = 0,
    show_progress: bool = True,
    strategy: str = "auto",
    provenance: dict | None = None,
    hyperparameters: dict | None = None,
    num_workers: int | None = None,
) -> Path:
    """Pretrain on ``dataset`` and export the backbone to ``output_dir/backbone.pt``.

    ``provenance`` goes into ``backbone.json`` (default: that of ``cfg``; the stage passes the run config's).
    ``cfg.loggers`` write under ``output_dir/logs``, with ``hyperparameters`` (default: ``cfg``; the stage
    passes the resolved run config and its provenance) as hyper-parameters.
    ``num_workers`` DataLoader processes fetch the batches (default: see
    :func:`~synthpos.data.stream.loader_workers`); the batches are the same whatever the count.

    Checkpoints go to ``output_dir/checkpoints/last.ckpt`` (the one before kept as
    ``previous.ckpt``) every ``checkpoint_every_epochs`` epochs, every
    ``checkpoint_every_minutes`` minutes and on SIGTERM; a run resumes from there (from the
    middle of an epoch too) and equals an uninterrupted one.

    Raises:
        Terminated: SIGTERM arrived; the checkpoint was written first.
    """
    import lightning as L

    from synthpos.resumable import AtomicCheckpointIO, ResumableBatchSampler, ResumableCheckpoint, usable_checkpoint

    this = sys.modules[__name__]
    KNNMonitor, OnlineLinearProbe = this.KNNMonitor, this.OnlineLinearProbe  # noqa: N806 (classes)
    accelerator, world = check_batch_size(cfg, len(dataset))
    check_loggers(cfg.loggers)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    # Lightning sets its loggers to INFO when imported; its device and tip lines are noise here.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    L.seed_everything(seed, workers=True, verbose=False)
    output_dir.mkdir(parents=True, exist_ok=True)
    precision = resolve_precision(cfg.precision, torch.device("cuda" if accelerator == "gpu" else "cpu"))
    method = build_method(cfg, dataset, seed)
    if cfg.compile:
        from synthpos.methods.compiled import compile_method

        compile_method(method)
    if method.scorer is not None:
        method.scorer.to(torch.device("cuda" if accelerator == "gpu" else "cpu"))
    # torch's SyncBatchNorm runs only on GPUs; on CPU processes (gloo) use synthpos's own.
    sync_batchnorm = cfg.sync_batchnorm and world > 1
    if sync_batchnorm and accelerator == "cpu":
        method = convert_global_batchnorm(method)
        sync_batchnorm = False
    devices = cfg.devices
    sampler = ResumableBatchSampler(len(dataset), cfg.batch_size // world, seed)
    workers = loader_workers(num_workers, dataset)
    loader = EpochLoader(
        PretrainBatches(dataset, store, seed, cfg.synthetic),
        # The loader draws its per-epoch base seed from the global generator, as a shuffled
        # DataLoader does; a resumed run restores that generator at its first batch.
        batch_sampler=sampler, collate_fn=_first, num_workers=workers, persistent_workers=workers > 0,
    )
    callbacks: list[L.Callback] = []
    if cfg.knn_every_epochs and monitor_data is not None and dataset.labels is not None:
        bank = bounded_sample(dataset, 10 * cfg.knn_subset, seed)
        test = bounded_sample(monitor_data, cfg.knn_subset, seed)
        callbacks.append(KNNMonitor(bank.images, bank.labels, test.images, test.labels, dataset.num_classes,
                                    cfg.augment.crop_size, dataset.mean, dataset.std, cfg.knn_every_epochs))
    if cfg.online_probe and monitor_data is not None and dataset.labels is not None:
        test = bounded_sample(monitor_data, cfg.knn_subset, seed)
        callbacks.append(OnlineLinearProbe(dataset.num_classes, test.images, test.labels, cfg.augment.crop_size,
                                           dataset.mean, dataset.std, cfg.online_probe_lr))
    checkpoints = ResumableCheckpoint(output_dir / "checkpoints", sampler, cfg.checkpoint_every_epochs,
                                      cfg.checkpoint_every_minutes)
    callbacks.append(checkpoints)  # last: after the callbacks that work at epoch ends
    if strategy == "auto" and world > 1:
        strategy = "ddp"
    loggers = build_loggers(cfg.loggers, output_dir / "logs", output_dir.name)
    log_hyperparameters(loggers, hyperparameters if hyperparameters is not None else {"pretrain": cfg.model_dump(mode="json")})
    trainer = L.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=cfg.num_nodes, strategy=strategy,
        precision="bf16-mixed" if precision == "bf16" else "32-true",
        max_epochs=cfg.epochs, max_time={"minutes": cfg.max_minutes} if cfg.max_minutes else None,
        sync_batchnorm=sync_batchnorm, default_root_dir=output_dir, logger=loggers or False,
        callbacks=callbacks, enable_progress_bar=show_progress, enable_model_summary=False,
        # At most once per epoch: with the fixed 10, a run of fewer steps logged no loss at all.
        log_every_n_steps=max(1, min(10, len(loader) // world)), num_sanity_val_steps=0,
        # The batch sampler splits the data over ranks itself (Lightning cannot wrap a batch sampler).
        use_distributed_sampler=False, plugins=[AtomicCheckpointIO()], enable_checkpointing=False,
    )
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    resume = usable_checkpoint(output_dir / "checkpoints", say=_say)
    if resume is not None:
        _say(f"resuming pretraining from {resume[0]} (step {resume[1]})")
        resume = resume[0]
    try:
        with warnings.catch_warnings():
            # Lightning cannot see that the batch sampler resumes mid-epoch (ResumableCheckpoint restores it).
            warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
            trainer.fit(method, train_dataloaders=loader, ckpt_path=resume)
    except SIGTERMException as err:
        finish_loggers(loggers, "failed")
        raise Terminated(f"pretraining stopped by SIGTERM; checkpoint {output_dir / 'checkpoints' / 'last.ckpt'}") from err
    finish_loggers(loggers)
    path = output_dir / "backbone.pt"
    if trainer.is_global_zero:
        save_backbone(method.backbone.to(memory_format=torch.contiguous_format), cfg.backbone, dataset.channels, path,
                      provenance if provenance is not None else make_provenance(cfg))
        history = next((c.history for c in callbacks if isinstance(c, KNNMonitor)), [])
        probe_history = next((c.history for c in callbacks if isinstance(c, OnlineLinearProbe)), [])
        (output_dir / "summary.json").write_text(json.dumps({
            "epochs": trainer.current_epoch, "steps": trainer.global_step, "knn_history": history,
            "online_probe_history": probe_history,
        }, indent=2))
    trainer.strategy.barrier()  # other ranks wait until backbone.pt is complete
    return path


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pretrain_stage(config: RunConfig, show_progress: bool = True) -> Path:
    """Stage 3 from a run config."""
    cfg = config.pretrain
    check_loggers(cfg.loggers)  # before the data is read or anything is written
    dataset = open_dataset(config.data, "train")
    store = None
    if MODES.get(cfg.synthetic.mode).needs_store:
        store = SyntheticStore.open(config.store_dir, dataset.name, dataset.split, dataset.images, verify=cfg.verify_store)
    check_batch_size(cfg, len(dataset))  # before anything is written
    check_method(cfg, dataset)
    monitor = (open_dataset(config.data.model_copy(update={"subset": None}), "test")
               if cfg.knn_every_epochs or cfg.online_probe else None)
    dump_config(config, config.pretrain_dir / "config.yaml")
    provenance = make_provenance(config)
    return pretrain(cfg, dataset, config.pretrain_dir, store, monitor, config.seed, show_progress,
                    provenance=provenance, hyperparameters={**config.model_dump(mode="json"), "provenance": provenance},
                    num_workers=config.data.num_workers)
