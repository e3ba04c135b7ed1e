"""External encoders in stage 4: a baseline's numbers beside the run's own, under the same protocols.

``evaluate.checkpoint`` may name, besides a synthpos ``backbone.pt``, any encoder that
``synthpos compare`` reads (:mod:`synthpos.evaluation.encoders`): a TorchScript file, a
torchvision or timm ``state_dict`` (``evaluate.arch: torchvision:resnet18`` or
``timm:resnet18``) or a CLIP folder. Such an encoder is a *baseline*: its frozen features go
through the very protocols of :func:`~synthpos.evaluation.protocols.run_protocols` (the same
validation carve, grids, label subsets and seed), and metrics.json holds its summary and
records under ``baselines`` (keyed by :func:`baseline_name`), beside the run's own
``results`` and ``records`` (those of ``<run_dir>/pretrain/backbone.pt``, when the run has one).

Which reader accepts the file is checked before the stage takes its lock or moves anything
(:func:`check_evaluate_input`, called by the stage's input check): a file none accepts is
one line naming ``evaluate.checkpoint``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from synthpos.config import DataConfig, EvaluateConfig, RunConfig
from synthpos.data import ImageDataset
from synthpos.data.stream import loader_workers
from synthpos.distributed import default_device
from synthpos.errors import SynthposError
from synthpos.evaluation.encoders import Encoder, load_encoder, resolve_backbone
from synthpos.evaluation.features import cached_features, images_digest, mirrored
from synthpos.evaluation.protocols import run_protocols

__all__ = ["external_checkpoint", "own_backbone", "load_external", "check_evaluate_input", "baseline_name",
           "external_features", "evaluate_external"]


def external_checkpoint(config: RunConfig) -> Path | None:
    """``evaluate.checkpoint`` when it is not a synthpos backbone (a baseline encoder), else None."""
    checkpoint = config.evaluate.checkpoint
    if checkpoint is None or resolve_backbone(Path(checkpoint)) is not None:
        return None
    return Path(checkpoint)


def own_backbone(config: RunConfig) -> Path:
    """The run's own backbone: ``evaluate.checkpoint`` when it is a synthpos one, else the pretraining's."""
    return config.pretrain_dir / "backbone.pt" if external_checkpoint(config) is not None else config.backbone_path


def load_external(config: RunConfig, path: Path, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Encoder:
    """The encoder at ``path``, its errors as one line naming ``evaluate.checkpoint``.

    Args:
        size, mean, std: the evaluation input of synthpos-normalised readers (TorchScript); state_dicts
            and CLIP folders bring their own normalisation.
    """
    try:
        return load_encoder(path, size, mean, std, config.evaluate.arch, arch_key="evaluate.arch")
    except SynthposError as err:
        raise SynthposError(f"evaluate.checkpoint={path}: {err}") from None
    except Exception as err:  # a reader that breaks on a foreign file (a truncated zip, a bad config.json)
        raise SynthposError(f"evaluate.checkpoint={path} cannot be read as TorchScript, a state_dict or a CLIP folder "
                            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); point it at an "
                            "encoder file that `synthpos compare` reads") from None


def check_evaluate_input(config: RunConfig, explicit: bool, readable_backbone) -> None:
    """What stage 4 reads, before its lock: the run's own backbone (when asked for alone) and a baseline encoder.

    Args:
        explicit: ``synthpos evaluate`` itself (not a stage of ``run``, where pretraining has just written
            the run's backbone).
        readable_backbone: ``(path, key) -> None``, raising unless ``path`` loads as a synthpos backbone.
    """
    external = external_checkpoint(config)
    if external is None:
        if config.evaluate.checkpoint is not None or explicit:
            readable_backbone(config.backbone_path, "evaluate.checkpoint" if config.evaluate.checkpoint else "backbone")
        return
    size = config.evaluate.feature_size or config.pretrain.augment.crop_size
    load_external(config, external, size, (0.5,), (0.5,))  # the reader that accepts it; normalisation unused here
    own = own_backbone(config)
    if explicit and own.is_file():
        readable_backbone(own, "backbone")


def baseline_name(config: RunConfig, encoder: Encoder) -> str:
    """``<reader or architecture>:<file name>``, e.g. ``timm:resnet18:weights.pt``, ``torchscript:model.pt``."""
    path = Path(config.evaluate.checkpoint)
    kind = config.evaluate.arch if encoder.reader == "state_dict" else encoder.reader
    return f"{kind}:{path.name}"


def _checkpoint_tag(path: Path) -> str:
    """A digest of the encoder's bytes (a file's, or a folder's files in name order)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(file.relative_to(path.parent if path.is_file() else path).as_posix().encode())
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def external_features(encoder: Encoder, images: np.ndarray, batch_size: int, num_workers: int = 0) -> torch.Tensor:
    """The encoder's final features of uint8 images, eval mode, no augmentation.

    Args:
        images: Shape: (N, H, W, C), uint8; an array or a streamed split.
        num_workers: processes that decode a streamed split's batches.

    Returns:
        float32 on the CPU. Shape: (N, D).
    """
    device = default_device()
    encoder.model.to(device)
    prepare = encoder.prepare
    moved = Encoder(encoder.name, encoder.model, lambda x: prepare(x.to(device)), output=encoder.output,
                    reader=encoder.reader)
    return torch.cat([final for final, _ in moved.batches(images, batch_size, num_workers=num_workers)])


def evaluate_external(
    config: RunConfig, data: DataConfig, datasets: dict[str, ImageDataset], cfg: EvaluateConfig, size: int,
    cache_dir: Path | None, seed: int,
) -> tuple[str, str, dict]:
    """The baseline's summary and records on one dataset's train and test splits (as the run's backbone sees them).

    Args:
        datasets: ``{"train": ..., "test": ...}``, labelled, ``max_train`` applied.

    Returns:
        ``(name, reader, {summary keys..., "records": [...]})``; every record carries ``"encoder": name``.
    """
    path = Path(config.evaluate.checkpoint)
    train = datasets["train"]
    encoder = load_external(config, path, size, train.mean, train.std)
    name = baseline_name(config, encoder)
    tag = f"baseline-{_checkpoint_tag(path)}-{config.evaluate.arch or ''}-{size}"
    data_tag = hashlib.sha256(data.model_dump_json().encode()).hexdigest()[:8]
    feats, mirror = {}, None
    for split, dataset in datasets.items():
        key = f"{tag}-{data.name}-{split}-{len(dataset)}-{data_tag}-{images_digest(dataset.images)}".replace(":", "_")

        workers = loader_workers(data.num_workers, dataset)

        def compute(ds=dataset):
            return external_features(encoder, ds.images, cfg.batch_size, workers)

        feats[split] = cached_features(cache_dir, key, compute) if cache_dir else compute()
        if split == "train" and "paper" in cfg.linear_protocols:
            def compute_mirror(ds=dataset):  # linear-paper's flip: (N, H, W, C), W reversed
                return external_features(encoder, mirrored(ds.images), cfg.batch_size, workers)

            mirror = cached_features(cache_dir, key + "-mirror", compute_mirror) if cache_dir else compute_mirror()
    features = f"{name} final output ({encoder.reader} reader), eval mode, frozen, no augmentation"
    summary, records = run_protocols(feats["train"], train.labels, feats["test"], datasets["test"].labels,
                                     train.num_classes, cfg, seed, mirror, data.name, features=features)
    return name, encoder.reader, {**summary, "records": [{**r, "encoder": name} for r in records]}
