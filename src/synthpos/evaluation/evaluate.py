"""Stage 4: the evaluation protocols on frozen features, for any supported dataset.

Writes ``<run_dir>/evaluate/metrics.json`` (schema ``synthpos.metrics/2``, docs/metrics.md):
a summary per dataset and one record per number saying how it was made.
"""

from __future__ import annotations

import hashlib
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from synthpos.atomic import atomic_path
from synthpos.config import DataConfig, EvaluateConfig, RunConfig
from synthpos.data import ImageDataset
from synthpos.data.stream import MappedImages, is_streamed, loader_workers, open_dataset
from synthpos.evaluation.features import cached_features, extract_features, images_digest, mirrored
from synthpos.evaluation.protocols import run_protocols
from synthpos.errors import SynthposError
from synthpos.models.backbones import load_backbone
from synthpos.provenance import provenance


_GREY = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _to_grey(images: np.ndarray) -> np.ndarray:
    """uint8 RGB (N, H, W, 3) -> uint8 grey (N, H, W, 1), ITU-R 601 luma."""
    return (images.astype(np.float32) @ _GREY)[..., None].round().astype(np.uint8)


def _to_rgb(images: np.ndarray, channels: int = 3) -> np.ndarray:
    """uint8 grey (N, H, W, 1) -> uint8 (N, H, W, channels), the channel repeated."""
    return np.repeat(images, channels, axis=-1)


def match_channels(dataset: ImageDataset, channels: int) -> ImageDataset:
    """Grey <-> RGB so a backbone can be evaluated on a dataset with other channels (transfer).

    In memory the split is converted at once; a streamed split is converted slice by slice as it
    is decoded (the same per-pixel arithmetic, so the same pixels).
    """
    if dataset.channels == channels:
        return dataset
    if channels == 1:
        convert, tag = _to_grey, "grey"
        mean = (float(np.dot(dataset.mean, [0.299, 0.587, 0.114])),)  # in float64, as the statistics are
        std = (float(np.dot(dataset.std, [0.299, 0.587, 0.114])),)
    else:
        convert, tag = partial(_to_rgb, channels=channels), f"rgb{channels}"
        mean, std = dataset.mean * channels, dataset.std * channels
    images = (MappedImages(dataset.images, convert, channels, tag) if is_streamed(dataset)
              else convert(dataset.images))
    return ImageDataset(dataset.name, dataset.split, images, dataset.labels, dataset.classes, mean, std)


METRICS_SCHEMA = "synthpos.metrics/2"


def score_features(
    train: torch.Tensor, train_labels: np.ndarray, test: torch.Tensor, test_labels: np.ndarray, num_classes: int,
    cfg: EvaluateConfig, seed: int = 0, mirror: torch.Tensor | None = None, dataset: str = "",
    features: str | None = None,
) -> dict:
    """Top-1 (fractions) of every configured protocol on frozen features, with their ``records``.

    ``mirror``: features of the training images flipped left-right (``linear-paper`` runs only with them).
    """
    kwargs = {"features": features} if features else {}
    summary, records = run_protocols(train, train_labels, test, test_labels, num_classes, cfg, seed, mirror, dataset,
                                     **kwargs)
    return {**summary, "records": records}


def labelled_splits(data: DataConfig, cfg: EvaluateConfig) -> dict[str, ImageDataset]:
    """``data``'s whole train (cut to ``max_train``) and test splits, as every encoder of stage 4 sees them.

    Streamed or in memory as ``data.stream`` says (:func:`~synthpos.data.stream.open_dataset`): a
    streamed split is read a batch at a time by the feature extraction; only the features (N, D) are held.
    """
    splits = {}
    for split in ("train", "test"):
        dataset = open_dataset(data.model_copy(update={"subset": None}), split)
        if dataset.labels is None:
            raise SynthposError(f"{data.name} {split} has no labels; evaluation needs a labelled dataset (class subfolders)")
        if split == "train" and cfg.max_train:
            dataset = dataset.take(min(cfg.max_train, len(dataset)))
        splits[split] = dataset
    return splits


def evaluate_backbone(
    backbone: nn.Module, data: DataConfig, cfg: EvaluateConfig, size: int, cache_dir: Path | None = None,
    backbone_file: Path | None = None, seed: int = 0, datasets: dict[str, ImageDataset] | None = None,
) -> dict[str, float]:
    """Features of ``data``'s train and test splits (cached), then kNN and the linear probe.

    With ``cfg.finetune`` set, the fine-tuning protocol too (:mod:`synthpos.evaluation.finetune`: it trains
    copies of ``backbone``, which itself is left as it was).

    Args:
        datasets: the splits already loaded (:func:`labelled_splits`); loaded here when None.
    """
    in_channels = next(m for m in backbone.modules() if isinstance(m, nn.Conv2d)).in_channels
    datasets = datasets or labelled_splits(data, cfg)
    splits, matched = {}, {}
    mirror = None
    for split in ("train", "test"):
        dataset = matched[split] = match_channels(datasets[split], in_channels)

        workers = loader_workers(data.num_workers, dataset)  # decode a streamed split's batches in parallel

        def compute(ds=dataset):
            return extract_features(backbone, ds.images, size, ds.mean, ds.std, cfg.batch_size, num_workers=workers)

        # The data config (root, image size, ...) and the images' bytes are part of the key: same name,
        # settings and count is not same images (a folder whose files were replaced).
        data_tag = hashlib.sha256(data.model_dump_json().encode()).hexdigest()[:8]
        key = f"{data.name}-{split}-{len(dataset)}-{size}-{data_tag}-{images_digest(dataset.images)}"
        feats = cached_features(cache_dir, key, compute, backbone_file=backbone_file) if cache_dir else compute()
        splits[split] = (feats, dataset.labels, dataset.num_classes)
        if split == "train" and "paper" in cfg.linear_protocols:
            def compute_mirror(ds=dataset):  # the flip of linear-paper: (N, H, W, C), W reversed
                return extract_features(backbone, mirrored(ds.images), size, ds.mean, ds.std, cfg.batch_size,
                                        num_workers=workers)

            mirror = (cached_features(cache_dir, key + "-mirror", compute_mirror, backbone_file=backbone_file)
                      if cache_dir else compute_mirror())
    (train, ytr, num_classes), (test, yte, _) = splits["train"], splits["test"]
    scores = score_features(train, ytr, test, yte, num_classes, cfg, seed, mirror, data.name)
    if cfg.finetune is not None:
        from synthpos.evaluation.finetune import finetune_protocols

        summary, records = finetune_protocols(backbone, matched["train"], matched["test"], size, cfg, seed, data.name,
                                              num_workers=loader_workers(data.num_workers, matched["train"]))
        scores = {**{k: v for k, v in scores.items() if k != "records"}, **summary,
                  "records": scores["records"] + records}
    return scores


def evaluate_stage(config: RunConfig, show_progress: bool = True) -> dict:
    """Stage 4 from a run config: writes ``<run_dir>/evaluate/metrics.json``.

    The run's own backbone gives ``results`` and ``records``; an external encoder in ``evaluate.checkpoint``
    (:mod:`synthpos.evaluation.external`) gives ``baselines[<name>]`` under the same protocols. Without an own
    backbone (``synthpos evaluate`` of a baseline alone) ``results`` and ``records`` are empty.
    """
    from synthpos.evaluation.external import evaluate_external, external_checkpoint, own_backbone

    cfg = config.evaluate
    external = external_checkpoint(config)
    backbone_file = own_backbone(config)
    has_own = external is None or backbone_file.is_file()
    backbone = load_backbone(backbone_file) if has_own else None
    size = cfg.feature_size or config.pretrain.augment.crop_size
    results, records, baselines = {}, [], {}
    for data in cfg.datasets or [config.data]:
        name = data.name if data.name not in results else f"{data.name}:{data.root}"
        datasets = labelled_splits(data, cfg)
        transfer = data != config.data
        if backbone is not None:
            scores = evaluate_backbone(backbone, data, cfg, size, config.evaluate_dir / "features", backbone_file,
                                       config.seed, datasets=datasets)
            for record in scores.pop("records"):
                records.append({**record, "dataset": name, "transfer": transfer})
            results[name] = scores
        if external is not None:
            base, reader, scores = evaluate_external(config, data, datasets, cfg, size,
                                                     config.evaluate_dir / "features", config.seed)
            entry = baselines.setdefault(base, {"checkpoint": str(external), "arch": cfg.arch, "reader": reader,
                                                "feature_size": size, "results": {}, "records": []})
            entry["records"] += [{**r, "dataset": name, "transfer": transfer} for r in scores.pop("records")]
            entry["results"][name] = scores
    if external is not None and backbone is None:
        print(f"note: no backbone at {backbone_file}; evaluated the baseline {external} alone", file=sys.stderr)
    metrics = {
        "schema": METRICS_SCHEMA, "backbone": str(backbone_file) if backbone is not None else None,
        "backbone_sha256": hashlib.sha256(Path(backbone_file).read_bytes()).hexdigest() if backbone is not None else None,
        "feature_size": size, "seed": config.seed, "results": results, "records": records,
        # What made these numbers; the resolved config is here in full (run_dir included).
        "provenance": provenance(config), "config": config.model_dump(mode="json"),
    }
    if baselines:
        metrics["baselines"] = baselines
    config.evaluate_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(config.evaluate_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2))
    return metrics
