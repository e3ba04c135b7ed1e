"""Stage 4: kNN and linear probe on frozen features, for any supported dataset."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from synthpos.atomic import atomic_path
from synthpos.config import DataConfig, EvaluateConfig, RunConfig
from synthpos.data import ImageDataset, load_dataset
from synthpos.evaluation.features import cached_features, extract_features
from synthpos.evaluation.knn import knn_accuracy
from synthpos.evaluation.linear_probe import linear_probe
from synthpos.errors import SynthposError
from synthpos.models.backbones import load_backbone


def match_channels(dataset: ImageDataset, channels: int) -> ImageDataset:
    """Grey <-> RGB so a backbone can be evaluated on a dataset with other channels (transfer)."""
    if dataset.channels == channels:
        return dataset
    images = dataset.images.astype(np.float32)
    if channels == 1:
        images = (images @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
        mean = (float(np.dot(dataset.mean, [0.299, 0.587, 0.114])),)
        std = (float(np.dot(dataset.std, [0.299, 0.587, 0.114])),)
    else:
        images = np.repeat(images, channels, axis=-1)
        mean, std = dataset.mean * channels, dataset.std * channels
    return ImageDataset(dataset.name, dataset.split, images.round().astype(np.uint8), dataset.labels, dataset.classes, mean, std)


def score_features(
    train: torch.Tensor, train_labels: np.ndarray, test: torch.Tensor, test_labels: np.ndarray, num_classes: int,
    cfg: EvaluateConfig, seed: int = 0,
) -> dict[str, float]:
    """kNN and linear-probe top-1 (fractions) of frozen features."""
    ytr, yte = torch.from_numpy(train_labels), torch.from_numpy(test_labels)
    knn = knn_accuracy(train, ytr, test, yte, num_classes, cfg.knn_k, cfg.knn_temperature)
    lin = cfg.linear
    probe = linear_probe(train, ytr, test, yte, num_classes, epochs=lin.epochs, lr=lin.lr, momentum=lin.momentum,
                         weight_decay=lin.weight_decay, batch_size=lin.batch_size, milestones=tuple(lin.milestones), seed=seed)
    return {"knn_top1": knn, "linear_top1": probe["top1"], "linear_train_top1": probe["train_top1"]}


def evaluate_backbone(
    backbone: nn.Module, data: DataConfig, cfg: EvaluateConfig, size: int, cache_dir: Path | None = None,
    backbone_file: Path | None = None, seed: int = 0,
) -> dict[str, float]:
    """Features of ``data``'s train and test splits (cached), then kNN and the linear probe."""
    in_channels = next(m for m in backbone.modules() if isinstance(m, nn.Conv2d)).in_channels
    splits = {}
    for split in ("train", "test"):
        dataset = load_dataset(data.model_copy(update={"subset": None}), split)
        if dataset.labels is None:
            raise SynthposError(f"{data.name} {split} has no labels; evaluation needs a labelled dataset (class subfolders)")
        if split == "train" and cfg.max_train:
            dataset = dataset.take(min(cfg.max_train, len(dataset)))
        dataset = match_channels(dataset, in_channels)

        def compute(ds=dataset):
            return extract_features(backbone, ds.images, size, ds.mean, ds.std, cfg.batch_size)

        # The data config (root, image size, ...) is part of the key: same name and count is not same images.
        data_tag = hashlib.sha256(data.model_dump_json().encode()).hexdigest()[:8]
        key = f"{data.name}-{split}-{len(dataset)}-{size}-{data_tag}"
        feats = cached_features(cache_dir, key, compute, backbone_file=backbone_file) if cache_dir else compute()
        splits[split] = (feats, dataset.labels, dataset.num_classes)
    (train, ytr, num_classes), (test, yte, _) = splits["train"], splits["test"]
    return score_features(train, ytr, test, yte, num_classes, cfg, seed)


def evaluate_stage(config: RunConfig, show_progress: bool = True) -> dict:
    """Stage 4 from a run config: writes ``<run_dir>/evaluate/metrics.json``."""
    cfg = config.evaluate
    backbone_file = config.backbone_path
    backbone = load_backbone(backbone_file)
    size = cfg.feature_size or config.pretrain.augment.crop_size
    results = {}
    for data in cfg.datasets or [config.data]:
        name = data.name if data.name not in results else f"{data.name}:{data.root}"
        results[name] = evaluate_backbone(backbone, data, cfg, size, config.evaluate_dir / "features", backbone_file, config.seed)
    metrics = {"backbone": str(backbone_file), "feature_size": size, "results": results}
    config.evaluate_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(config.evaluate_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2))
    return metrics
