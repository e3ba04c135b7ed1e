"""Fine-tuning protocol: the whole backbone and a linear head trained on a class-balanced share of the labels.

GenView (and SimCLR, BYOL before it) report semi-supervised fine-tuning on 1% and 10% of
the labels beside the frozen linear probe. Here, per label fraction ``f``:

1. **Choice on validation.** The training split's validation carve
   (:func:`~synthpos.evaluation.splits.validation_split`, the one the kNN and the linear
   probe choose on) is held out; a copy of the backbone is fine-tuned on the class-balanced
   share ``f`` of the rest for every (optimiser, epochs, learning rate) of the grid and
   scored on the carve; the best (the first on a tie) is kept.
2. **Scored once.** A fresh copy is fine-tuned with that setting on the class-balanced
   share ``f`` of the whole training split (the same images the ``linear-fast`` probe sees
   at ``f``, :func:`~synthpos.evaluation.splits.balanced_subset`) and the test split is scored once.

Training: zero-initialised linear head on the backbone's pooled features, cross-entropy,
every parameter trained (BatchNorm in training mode), random horizontal flips, cosine
learning rate per step, SGD with Nesterov momentum 0.9 or AdamW. The order and flips are
drawn from a CPU generator seeded with the evaluation seed, so a setting gives the same
numbers on every run on one device.

A streamed split's label share is not decoded up front (:func:`~synthpos.data.stream.subset_images`): each
batch is decoded when a step needs it, by ``data.num_workers`` DataLoader processes
(:func:`~synthpos.data.stream.decoded_batches`), again every epoch, so memory holds a few batches,
not the share (10% of ImageNet at 224 px would be about 19 GB). The cost is decoding every epoch:
at about 3.5 ms of one core per 400 x 350 JPEG, 10% of ImageNet is about 7.5 core-minutes an epoch.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthpos.config import EvaluateConfig
from synthpos.data import ImageDataset
from synthpos.data.augment import to_model_input
from synthpos.data.stream import decoded_batches, decoded_chunks, subset_images
from synthpos.distributed import default_device
from synthpos.evaluation.protocols import FEATURES_EVAL, _record
from synthpos.evaluation.splits import balanced_subset, validation_split

__all__ = ["finetune", "finetune_protocols", "finetune_grid"]


def _accuracy(model: nn.Module, head: nn.Linear, images: Any, labels: np.ndarray, size: int, mean, std,
              batch_size: int, device: torch.device, workers: int = 0) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start, chunk in zip(range(0, len(images), batch_size), decoded_chunks(images, batch_size, workers)):
            batch = torch.from_numpy(chunk).permute(0, 3, 1, 2)
            logits = head(model(to_model_input(batch.to(device), size, mean, std)))
            correct += int((logits.argmax(1).cpu() == torch.from_numpy(labels[start: start + batch_size])).sum())
    return correct / len(images)


def finetune(
    backbone: nn.Module, train_images: Any, train_labels: np.ndarray, eval_images: Any,
    eval_labels: np.ndarray, num_classes: int, size: int, mean: tuple[float, ...], std: tuple[float, ...], *,
    optimizer: str = "sgd", lr: float = 0.01, epochs: int = 30, weight_decay: float = 0.0, batch_size: int = 64,
    seed: int = 0, flip: bool = True, device: torch.device | str | None = None, num_workers: int = 0,
) -> dict[str, Any]:
    """Fine-tune a copy of ``backbone`` with a linear head on labelled images; score it on others.

    Args:
        backbone: maps normalised images (B, C, size, size) to features (B, D); left unchanged.
        train_images, eval_images: uint8 arrays, or a streamed split's array-likes (read a batch at a time).
            Shape: (N, H, W, C) and (M, H, W, C).
        train_labels, eval_labels: in ``[0, num_classes)``. Shape: (N,) and (M,).
        optimizer: ``sgd`` (Nesterov momentum 0.9) or ``adamw``.
        lr: peak learning rate of the cosine schedule (per step, to 0 at the end).
        flip: random horizontal flips of the training images.
        num_workers: DataLoader processes that decode a streamed split's batches (the numbers do not depend on it).

    Returns:
        ``{"top1": accuracy on the eval images, "train_top1": on the training images, "model": the fine-tuned
        backbone, "head": its head}``.
    """
    device = torch.device(device) if device is not None else default_device()
    model = copy.deepcopy(backbone).to(device).train()
    with torch.no_grad():
        probe = torch.from_numpy(np.ascontiguousarray(train_images[:2])).permute(0, 3, 1, 2).to(device)
        model.eval()
        dim = model(to_model_input(probe, size, mean, std)).shape[1]
        model.train()
    # Zero-initialised, as the linear probe's: nothing random, and the first steps move the head alone.
    head = nn.Linear(dim, num_classes).to(device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    params = list(model.parameters()) + list(head.parameters())
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True,
                                                     weight_decay=weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be sgd or adamw; got {optimizer}")
    n = len(train_images)
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    generator = torch.Generator().manual_seed(seed)
    labels = torch.from_numpy(np.asarray(train_labels, dtype=np.int64))
    step = 0
    with torch.inference_mode(False), torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            flips = torch.rand(n, generator=generator) < 0.5
            batches = list(order.split(batch_size))
            for idx, images in zip(batches, decoded_batches(train_images, [b.numpy() for b in batches], num_workers)):
                for group in opt.param_groups:
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
                step += 1
                if len(idx) == 1 and n > 1:
                    continue  # BatchNorm cannot normalise one image whose features are 1x1: a leftover batch is skipped
                batch = torch.from_numpy(images).permute(0, 3, 1, 2).to(device)
                x = to_model_input(batch, size, mean, std)
                if flip:
                    x = torch.where(flips[idx].to(device).view(-1, 1, 1, 1), x.flip(3), x)
                loss = F.cross_entropy(head(model(x)), labels[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    eval_batch = max(batch_size, 256)
    return {"top1": _accuracy(model, head, eval_images, np.asarray(eval_labels), size, mean, std, eval_batch, device,
                              num_workers),
            "train_top1": _accuracy(model, head, train_images, np.asarray(train_labels), size, mean, std, eval_batch,
                                    device, num_workers),
            "model": model, "head": head}


def finetune_grid(cfg: EvaluateConfig) -> list[tuple[str, int, float]]:
    """Every (optimiser, epochs, learning rate) of ``evaluate.finetune``, in the order tried."""
    ft = cfg.finetune
    return [(o, e, lr) for o in ft.optimizers for e in ft.epochs for lr in ft.lr_grid]


def finetune_protocols(
    backbone: nn.Module, train: ImageDataset, test: ImageDataset, size: int, cfg: EvaluateConfig, seed: int = 0,
    dataset: str = "", num_workers: int = 0,
) -> tuple[dict[str, float], list[dict]]:
    """The ``finetune`` protocol at every fraction of ``evaluate.finetune`` (see the module docstring).

    Args:
        train, test: labelled splits with the backbone's channels (``max_train`` applied to train).
        num_workers: DataLoader processes that decode a streamed split's batches.

    Returns:
        ``(summary, records)``: ``finetune_top1@<fraction>`` per fraction; one record per number.
    """
    ft = cfg.finetune
    ytr = np.asarray(train.labels)
    fit, val = validation_split(ytr, cfg.validation_fraction, seed)
    grid = finetune_grid(cfg)
    common = {"weight_decay": ft.weight_decay, "batch_size": ft.batch_size, "schedule": "cosine per step",
              "head": "linear, zero-initialised", "trained": "all backbone parameters and the head",
              "augmentation": "random horizontal flip"}

    def run(opt, epochs, lr, idx, eval_images, eval_labels):
        return finetune(backbone, subset_images(train.images, idx), ytr[idx], eval_images, eval_labels,
                        train.num_classes, size, train.mean, train.std, optimizer=opt, lr=lr, epochs=epochs,
                        weight_decay=ft.weight_decay, batch_size=ft.batch_size, seed=seed, num_workers=num_workers)

    summary, records = {}, []
    for fraction in sorted(set(ft.fractions), reverse=True):
        chosen_from = fit[balanced_subset(ytr[fit], fraction, seed)]
        if len(grid) > 1:
            held_out = subset_images(train.images, val)
            scores = {f"optimizer={o},epochs={e},lr={lr:g}": run(o, e, lr, chosen_from, held_out, ytr[val])["top1"]
                      for o, e, lr in grid}
            best = max(range(len(grid)), key=lambda i: (list(scores.values())[i], -i))
            selection = {"split": "validation", "carved_from": "train", "fraction": cfg.validation_fraction,
                         "images": len(val), "fit_labels": len(chosen_from),
                         "grid": {"optimizer": ft.optimizers, "epochs": ft.epochs, "lr": ft.lr_grid},
                         "validation_top1": scores,
                         "note": "each setting fine-tuned on the class-balanced share of the rest of the training split"}
        else:
            best, selection = 0, {"split": "none", "note": "one setting configured"}
        opt, epochs, lr = grid[best]
        idx = balanced_subset(ytr, fraction, seed)
        result = run(opt, epochs, lr, idx, test.images, np.asarray(test.labels))
        hyper = {"optimizer": "sgd (nesterov, momentum 0.9)" if opt == "sgd" else "adamw", "lr": lr, "epochs": epochs,
                 **common}
        records.append(_record(result["top1"], "finetune", "finetune", dataset,
                               FEATURES_EVAL.split(",")[0] + ", fine-tuned end to end with a linear head",
                               len(idx), fraction, selection, hyper, len(test), seed,
                               subset="all" if fraction == 1 else "class-balanced, seeded",
                               name=f"finetune@{fraction:g}/test/seed={seed}", train_top1=result["train_top1"]))
        summary[f"finetune_top1@{fraction:g}"] = result["top1"]
    return summary, records
