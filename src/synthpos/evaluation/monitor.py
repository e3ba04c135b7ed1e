"""Online kNN monitor: a Lightning callback, so methods stay free of evaluation code."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from synthpos.evaluation.features import extract_features
from synthpos.evaluation.knn import knn_accuracy


class KNNMonitor(L.Callback):
    """Every ``every_n_epochs``, weighted-kNN top-1 of the backbone on held-out images, logged as ``knn/top1``."""

    def __init__(self, train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray, test_labels: np.ndarray,
                 num_classes: int, size: int, mean, std, every_n_epochs: int = 1, k: int = 200, temperature: float = 0.1) -> None:
        self.train_images, self.train_labels = train_images, torch.from_numpy(train_labels)
        self.test_images, self.test_labels = test_images, torch.from_numpy(test_labels)
        self.num_classes, self.size, self.mean, self.std = num_classes, size, mean, std
        self.every_n_epochs, self.k, self.temperature = every_n_epochs, k, temperature
        self.history: list[tuple[int, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs and epoch != trainer.max_epochs:
            return
        backbone = pl_module.backbone
        train = extract_features(backbone, self.train_images, self.size, self.mean, self.std)
        test = extract_features(backbone, self.test_images, self.size, self.mean, self.std)
        top1 = knn_accuracy(train, self.train_labels, test, self.test_labels, self.num_classes, self.k, self.temperature)
        self.history.append((epoch, top1))
        pl_module.log("knn/top1", top1, prog_bar=True, rank_zero_only=True)
