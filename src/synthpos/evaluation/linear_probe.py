"""Linear evaluation: a single linear layer trained on frozen features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from synthpos.evaluation.knn import _check_features_labels

__all__ = ["linear_probe"]


def _as_normal(x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Inference tensors (made under torch.inference_mode) cannot take part in
    # autograd; copy only those, to avoid doubling memory for the usual case.
    x = x.detach().to(device=device, dtype=dtype)
    return x.clone() if x.is_inference() else x


def _accuracy(layer: nn.Linear, features: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    correct = 0
    with torch.no_grad():
        for start in range(0, features.shape[0], batch_size):
            logits = layer(features[start : start + batch_size])
            correct += int((logits.argmax(dim=1) == labels[start : start + batch_size]).sum())
    return correct / features.shape[0]


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 1.0,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    milestones: Sequence[float] = (0.6, 0.8),
    seed: int = 0,
    standardize: bool = True,
) -> dict[str, Any]:
    """Train a linear classifier on frozen features and report its accuracy.

    One ``nn.Linear`` (zero-initialised: the problem is convex, so no random
    init is needed) is trained with minibatch SGD and cross-entropy. Every
    epoch visits the training set in a fresh order drawn from a generator
    seeded with ``seed``, so the result is deterministic for a given seed (on
    a given device). The learning rate is multiplied by 0.1 at each
    ``milestones`` fraction of ``epochs``. Computation happens on
    ``train_features.device``.

    Args:
        train_features: Frozen training features. Shape: (N, D).
        train_labels: Integer labels in ``[0, num_classes)``. Shape: (N,).
        test_features: Frozen test features. Shape: (M, D).
        test_labels: Integer labels in ``[0, num_classes)``. Shape: (M,).
        num_classes: Number of classes C.
        epochs: Passes over the training set (>= 1).
        lr: Initial SGD learning rate (> 0).
        momentum: SGD momentum.
        weight_decay: L2 penalty on the layer (applied in standardised space).
        batch_size: Minibatch size (>= 1).
        milestones: Fractions of ``epochs`` in (0, 1] at which the learning
            rate is divided by 10; epoch ``round(f * epochs)`` is the first at
            the lower rate.
        seed: Seed of the minibatch order.
        standardize: Normalise features by the training-set mean and standard
            deviation before the layer.

    Returns:
        ``{"top1": test accuracy in [0, 1], "train_top1": training accuracy in
        [0, 1], "epochs": epochs}``.

    Raises:
        ValueError: On mismatched shapes, labels out of range, empty sets,
            or invalid hyper-parameters.

    Example:
        >>> result = linear_probe(train_z, train_y, test_z, test_y, num_classes=10)
        >>> print(f"linear top-1: {100 * result['top1']:.1f}%")
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1; got {epochs}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0; got {lr}")
    if momentum < 0 or weight_decay < 0:
        raise ValueError(f"momentum and weight_decay must be >= 0; got {momentum} and {weight_decay}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if any(not 0 < f <= 1 for f in milestones):
        raise ValueError(f"milestones must be fractions of the epochs in (0, 1]; got {tuple(milestones)}")
    _check_features_labels(train_features, train_labels, num_classes, "train")
    _check_features_labels(test_features, test_labels, num_classes, "test")
    if train_features.shape[0] == 0 or test_features.shape[0] == 0:
        raise ValueError(
            f"linear_probe needs non-empty train and test sets; got {train_features.shape[0]} "
            f"and {test_features.shape[0]} samples"
        )
    if test_features.shape[1] != train_features.shape[1]:
        raise ValueError(
            f"test_features has dimension {test_features.shape[1]} but train_features has "
            f"{train_features.shape[1]}; they must come from the same model"
        )

    device = train_features.device
    # inference_mode(False): callers often extract features under
    # inference_mode; we still need autograd for the layer itself.
    with torch.inference_mode(False), torch.enable_grad():
        x_train = _as_normal(train_features, device, torch.float32)
        x_test = _as_normal(test_features, device, torch.float32)
        y_train = _as_normal(train_labels, device, torch.long)
        y_test = _as_normal(test_labels, device, torch.long)

        if standardize:
            # Feature scales differ by orders of magnitude across backbones
            # and methods; a per-dimension affine map to zero mean / unit
            # variance makes the problem equally well conditioned for all of
            # them, so one fixed lr (1.0) works without a per-backbone sweep.
            # It is an invertible reparametrisation of the linear layer, so
            # the set of reachable classifiers is unchanged.
            mean = x_train.mean(dim=0)
            std = x_train.std(dim=0, unbiased=False).clamp_min(1e-6)
            x_train = (x_train - mean) / std
            x_test = (x_test - mean) / std

        layer = nn.Linear(x_train.shape[1], num_classes).to(device)
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
        optimizer = torch.optim.SGD(
            layer.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
        drop_epochs = sorted(round(f * epochs) for f in milestones)
        generator = torch.Generator().manual_seed(seed)
        n = x_train.shape[0]

        for epoch in range(epochs):
            decays = sum(epoch >= m for m in drop_epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.1**decays
            # The permutation is drawn on the CPU so the order does not depend
            # on the device's RNG.
            order = torch.randperm(n, generator=generator).to(device)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                loss = F.cross_entropy(layer(x_train[idx]), y_train[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

        eval_batch = max(batch_size, 4096)
        return {
            "top1": _accuracy(layer, x_test, y_test, eval_batch),
            "train_top1": _accuracy(layer, x_train, y_train, eval_batch),
            "epochs": epochs,
        }
