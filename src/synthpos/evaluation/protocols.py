"""Named evaluation protocols on frozen features, each result a self-describing record.

Every number synthpos reports comes out of here as a record (the schema is in
docs/metrics.md): which probe, on which features, with how many labels, which split chose
its hyper-parameters, on which split it was scored, with which seed. Hyper-parameters are
chosen on a validation split carved from the training split; the chosen setting is then
refitted on the whole training split (or the label fraction's subset of it) and the test
split is scored once.

Protocols:

- ``knn``: weighted kNN (cosine, ``exp(s / T)`` votes) over a grid of k at one temperature
  (CLSP's official kNN: k in {5, 10, 20, 50, 100, 200}, T = 0.07, best k; here "best" is
  chosen on validation, not on the test split).
- ``linear-fast``: a linear probe on cached, standardised features; learning rate and
  weight decay chosen on validation.
- ``linear-paper``: CLSP's official offline linear evaluation (:mod:`paper_probe`), fixed
  hyper-parameters, nothing chosen.
- ``linear-fast`` at label fractions below 1 (label efficiency): class-balanced seeded
  subsets, with the hyper-parameters chosen for the full-label probe.
"""

from __future__ import annotations

import sys

from typing import Any

import numpy as np
import torch

from synthpos.config import EvaluateConfig
from synthpos.evaluation.knn import knn_accuracy
from synthpos.evaluation.linear_probe import linear_probe
from synthpos.evaluation.paper_probe import paper_linear_probe
from synthpos.evaluation.splits import balanced_subset, validation_split

__all__ = ["run_protocols", "knn_grid", "select_fast_probe", "FEATURES_EVAL"]

FEATURES_EVAL = "backbone output (global-average-pooled), eval mode, frozen, no augmentation"


def knn_ks(cfg: EvaluateConfig) -> list[int]:
    return [cfg.knn_k] if isinstance(cfg.knn_k, int) else list(cfg.knn_k)


def knn_grid(
    train: torch.Tensor, ytr: torch.Tensor, num_classes: int, ks: list[int], temperature: float,
    val_fraction: float, seed: int,
) -> tuple[int, dict[str, float], int]:
    """The k of ``ks`` with the best validation top-1 (the smallest on a tie), every k's score, the validation size."""
    fit, val = validation_split(ytr.numpy(), val_fraction, seed)
    fit_t, val_t = torch.from_numpy(fit), torch.from_numpy(val)
    # A k above the images left after the carve would vote over all of them (the same as a smaller k):
    # dropped, said once. The config check already refused a grid that cannot fit at all.
    if dropped := [k for k in ks if k > len(fit)]:
        ks = [k for k in ks if k <= len(fit)] or [len(fit)]
        print(f"note: kNN grid values {dropped} are more than the {len(fit)} images fitted on after the validation "
              f"carve; dropped (tried: {ks})", file=sys.stderr)
    scores = {str(k): knn_accuracy(train[fit_t], ytr[fit_t], train[val_t], ytr[val_t], num_classes, k, temperature)
              for k in ks}
    best = max(ks, key=lambda k: (scores[str(k)], -k))
    return best, scores, len(val)


def _fast_fit(train, ytr, test, yte, num_classes, cfg: EvaluateConfig, lr: float, wd: float, seed: int) -> dict:
    lin = cfg.linear
    return linear_probe(train, ytr, test, yte, num_classes, epochs=lin.epochs, lr=lr, momentum=lin.momentum,
                        weight_decay=wd, batch_size=lin.batch_size, milestones=tuple(lin.milestones), seed=seed)


def fast_grid(cfg: EvaluateConfig) -> list[tuple[float, float]]:
    lrs = cfg.linear.lr_grid or [cfg.linear.lr]
    wds = cfg.linear.weight_decay_grid or [cfg.linear.weight_decay]
    return [(lr, wd) for lr in lrs for wd in wds]


def select_fast_probe(
    train: torch.Tensor, ytr: torch.Tensor, num_classes: int, cfg: EvaluateConfig, seed: int,
) -> tuple[tuple[float, float], dict[str, float], int]:
    """(lr, weight decay) of the fast probe with the best validation top-1 (the first on a tie)."""
    grid = fast_grid(cfg)
    fit, val = validation_split(ytr.numpy(), cfg.validation_fraction, seed)
    fit_t, val_t = torch.from_numpy(fit), torch.from_numpy(val)
    scores = {}
    for lr, wd in grid:
        scores[f"lr={lr:g},weight_decay={wd:g}"] = _fast_fit(train[fit_t], ytr[fit_t], train[val_t], ytr[val_t],
                                                              num_classes, cfg, lr, wd, seed)["top1"]
    best = max(range(len(grid)), key=lambda i: (list(scores.values())[i], -i))
    return grid[best], scores, len(val)


def _record(value: float, probe: str, protocol: str, dataset: str, features: str, labels: int, fraction: float,
            selection: dict, hyper: dict, test_images: int, seed: int, **extra: Any) -> dict:
    return {"metric": "top1", "value": value, "probe": probe, "protocol": protocol, "dataset": dataset,
            "features": features, "train_labels": labels, "label_fraction": fraction, "fit_on": "train",
            "scored_on": "test", "test_images": test_images, "selection": selection, "hyper_parameters": hyper,
            "seed": seed, **extra}


def run_protocols(
    train: torch.Tensor, train_labels: np.ndarray, test: torch.Tensor, test_labels: np.ndarray, num_classes: int,
    cfg: EvaluateConfig, seed: int = 0, mirror: torch.Tensor | None = None, dataset: str = "",
    features: str = FEATURES_EVAL,
) -> tuple[dict[str, float], list[dict]]:
    """Every configured protocol on one encoder's frozen features.

    Args:
        train: Training-split features. Shape: (N, D).
        test: Test-split features. Shape: (M, D).
        mirror: Features of the training images flipped left-right, for ``linear-paper``
            (skipped when None). Shape: (N, D).

    Returns:
        ``(summary, records)``: summary has ``knn_top1``, ``linear_top1`` (fast),
        ``linear_train_top1`` and, when run, ``linear_paper_top1`` and
        ``linear_top1@<fraction>``; records are the schema's records, one per number.
    """
    ytr, yte = torch.from_numpy(np.asarray(train_labels)), torch.from_numpy(np.asarray(test_labels))
    n, m = len(ytr), len(yte)
    val_note = {"split": "validation", "carved_from": "train", "fraction": cfg.validation_fraction}
    records: list[dict] = []
    summary: dict[str, float] = {}

    ks = knn_ks(cfg)
    if len(ks) > 1:
        k, scores, n_val = knn_grid(train, ytr, num_classes, ks, cfg.knn_temperature, cfg.validation_fraction, seed)
        selection = {**val_note, "images": n_val, "grid": {"k": ks}, "validation_top1": scores}
    else:
        k, selection = ks[0], {"split": "none", "note": "one k configured"}
    knn = knn_accuracy(train, ytr, test, yte, num_classes, k, cfg.knn_temperature)
    records.append(_record(knn, "knn", "knn", dataset, features + ", L2-normalised", n, 1.0, selection,
                           {"k": k, "temperature": cfg.knn_temperature, "distance": "cosine"}, m, seed))
    summary["knn_top1"] = knn

    chosen: tuple[float, float] | None = None
    if "fast" in cfg.linear_protocols:
        if len(fast_grid(cfg)) > 1:
            chosen, scores, n_val = select_fast_probe(train, ytr, num_classes, cfg, seed)
            selection = {**val_note, "images": n_val, "grid": {"lr": cfg.linear.lr_grid or [cfg.linear.lr],
                         "weight_decay": cfg.linear.weight_decay_grid or [cfg.linear.weight_decay]},
                         "validation_top1": scores}
        else:
            chosen, selection = fast_grid(cfg)[0], {"split": "none", "note": "one setting configured"}
        lin = cfg.linear
        hyper = {"lr": chosen[0], "weight_decay": chosen[1], "momentum": lin.momentum, "epochs": lin.epochs,
                 "batch_size": lin.batch_size, "milestones": list(lin.milestones), "standardized": True,
                 "augmentation": "none"}
        for fraction in sorted(set(cfg.label_fractions) | {1.0}, reverse=True):
            idx = torch.from_numpy(balanced_subset(ytr.numpy(), fraction, seed)) if fraction < 1 else torch.arange(n)
            probe = _fast_fit(train[idx], ytr[idx], test, yte, num_classes, cfg, *chosen, seed)
            sel = selection if fraction == 1 else {**selection, "note": "hyper-parameters chosen for the 100% probe"}
            records.append(_record(probe["top1"], "linear", "linear-fast", dataset, features + ", standardised",
                                   len(idx), fraction, sel, hyper, m, seed,
                                   subset="all" if fraction == 1 else "class-balanced, seeded"))
            if fraction == 1:
                summary["linear_top1"], summary["linear_train_top1"] = probe["top1"], probe["train_top1"]
            else:
                summary[f"linear_top1@{fraction:g}"] = probe["top1"]

    if "paper" in cfg.linear_protocols and mirror is not None:
        p = cfg.linear_paper
        probe = paper_linear_probe(train, mirror, ytr, test, yte, num_classes, epochs=p.epochs, lr=p.lr,
                                   batch_size=p.batch_size, milestones=tuple(p.milestones), seed=seed)
        hyper = {"lr": p.lr, "momentum": 0.0, "weight_decay": 0.0, "epochs": p.epochs, "batch_size": p.batch_size,
                 "milestones": list(p.milestones), "standardized": False, "augmentation": "random horizontal flip",
                 "reported": "last epoch"}
        records.append(_record(probe["top1"], "linear", "linear-paper", dataset, features + ", not standardised",
                               n, 1.0, {"split": "none", "note": "fixed hyper-parameters (CLSP's official protocol)"},
                               hyper, m, seed))
        summary["linear_paper_top1"] = probe["top1"]
    return summary, records
