"""CLSP's official offline linear evaluation, on cached features of each image and its mirror.

The official protocol (dewenzeng/clsp, ``utils/eval_utils.py: linear_eval``): the backbone
frozen in eval mode, a fresh random horizontal flip of every training image in every
epoch and no other augmentation, no feature standardisation, one ``nn.Linear`` (PyTorch's
default initialisation) trained with SGD lr 1.0 without momentum or weight decay, batch
256 (the last batch smaller), 100 epochs, the learning rate x0.1 at epochs 60 and 80, and
the test top-1 of the last epoch reported.

A frozen eval-mode backbone maps an image to the same features whatever batch it is in,
and a flip has two outcomes, so encoding each training image and its mirror image once
and choosing one of the two per image and epoch gives the same classifier as re-encoding
the flipped images every epoch (``tests/evaluation/test_paper_probe.py`` checks this), at
the cost of two feature passes instead of 100.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from synthpos.evaluation.knn import _check_features_labels

__all__ = ["paper_linear_probe", "train_flip_probe"]

#: ``features_of(indices (b,), flip (b,) bool) -> (b, D)``: the features of those training images, flipped where True
FeaturesOf = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def train_flip_probe(
    features_of: FeaturesOf, labels: torch.Tensor, dim: int, num_classes: int, epochs: int = 100, lr: float = 1.0,
    batch_size: int = 256, milestones: Sequence[float] = (0.6, 0.8), seed: int = 0,
) -> nn.Linear:
    """Train the linear layer with a seeded flip of every image in every epoch.

    Each epoch draws, from one CPU generator seeded with ``seed``, a shuffle of the N
    images and then a flip bit per image; ``features_of`` turns a batch of indices and
    flip bits into features. Any two ``features_of`` that return the same features give
    the same layer.

    Args:
        features_of: see :data:`FeaturesOf`.
        labels: Integer labels of the N training images. Shape: (N,).
        dim: Feature dimension D.
        milestones: Fractions of ``epochs`` where the rate drops x0.1 (0.6, 0.8 of 100: 60, 80).

    Returns:
        The trained ``nn.Linear(D, num_classes)``, on ``labels.device``.
    """
    device = labels.device
    n = labels.shape[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # nn.Linear's default (Kaiming-uniform) initialisation, as the official code
        layer = nn.Linear(dim, num_classes)
    layer = layer.to(device)
    optimizer = torch.optim.SGD(layer.parameters(), lr=lr, momentum=0.0, weight_decay=0.0)
    drop_epochs = sorted(round(f * epochs) for f in milestones)
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode(False), torch.enable_grad():
        for epoch in range(epochs):
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.1 ** sum(epoch >= m for m in drop_epochs)
            order = torch.randperm(n, generator=generator)
            flips = torch.rand(n, generator=generator) < 0.5  # one flip per image per epoch (RandomHorizontalFlip)
            for start in range(0, n, batch_size):
                idx = order[start: start + batch_size]
                x = features_of(idx, flips[idx]).to(device=device, dtype=torch.float32)
                loss = F.cross_entropy(layer(x), labels[idx.to(device)])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return layer


def _top1(layer: nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        correct = sum(int((layer(features[s: s + 4096].float()).argmax(1) == labels[s: s + 4096]).sum())
                      for s in range(0, features.shape[0], 4096))
    return correct / features.shape[0]


def paper_linear_probe(
    train_features: torch.Tensor, mirror_features: torch.Tensor, train_labels: torch.Tensor,
    test_features: torch.Tensor, test_labels: torch.Tensor, num_classes: int, epochs: int = 100, lr: float = 1.0,
    batch_size: int = 256, milestones: Sequence[float] = (0.6, 0.8), seed: int = 0,
) -> dict[str, float]:
    """CLSP's offline linear evaluation on cached features (see the module docstring).

    Args:
        train_features: Eval-mode features of the training images. Shape: (N, D).
        mirror_features: Features of the same images flipped left-right. Shape: (N, D).
        train_labels: Shape: (N,).
        test_features: Features of the (unflipped) test images. Shape: (M, D).
        test_labels: Shape: (M,).

    Returns:
        ``{"top1": the last epoch's test top-1, "train_top1": top-1 on the unflipped training images}``.
    """
    _check_features_labels(train_features, train_labels, num_classes, "train")
    _check_features_labels(test_features, test_labels, num_classes, "test")
    if mirror_features.shape != train_features.shape:
        raise ValueError(f"mirror_features has shape {tuple(mirror_features.shape)}; it must match train_features "
                         f"{tuple(train_features.shape)} (one mirror image per training image)")
    plain, mirror = train_features.detach().float(), mirror_features.detach().float()
    ytr, yte = train_labels.long(), test_labels.long()

    def features_of(idx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        return torch.where(flip[:, None], mirror[idx], plain[idx])

    layer = train_flip_probe(features_of, ytr, plain.shape[1], num_classes, epochs, lr, batch_size, milestones, seed)
    return {"top1": _top1(layer, test_features, yte), "train_top1": _top1(layer, plain, ytr)}
