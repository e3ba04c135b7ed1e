"""Online linear probe: a Lightning callback that trains a linear layer beside pretraining.

As solo-learn's online classifier: the layer sees the backbone's features of the training
views, *detached*, so it never changes the backbone; it is trained with its own SGD
optimiser in every step, and scored once per epoch on held-out images in eval mode. Its
numbers (``online/linear_top1``) describe a moving encoder, with augmented training
views and no hyper-parameter choice; they are reported apart from the offline
evaluation protocols and never mixed with them (solo-learn #216: online numbers offline
evaluation does not reach).

The features come from a forward hook on ``pl_module.backbone``: the step's own forward
pass (all views in one batch, :meth:`SSLMethod.embed_views`), so the probe costs a linear
layer, not another backbone pass. Only the first ``2 * B`` rows (the two real views) are
used; a synthetic view carries its anchor's label only if the generator kept the class.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthpos.evaluation.features import extract_features

__all__ = ["OnlineLinearProbe"]


class OnlineLinearProbe(L.Callback):
    """Train ``nn.Linear(D, C)`` on detached training features; log its test top-1 every epoch.

    Args:
        num_classes: C.
        test_images: held-out uint8 images (M, H, W, C) scored at each epoch's end.
        test_labels: their labels (M,).
        size, mean, std: the evaluation input (as :func:`extract_features`).
        lr: SGD learning rate (momentum 0.9, no weight decay: solo-learn's classifier settings).
    """

    def __init__(self, num_classes: int, test_images: np.ndarray, test_labels: np.ndarray, size: int, mean, std,
                 lr: float = 0.1) -> None:
        self.num_classes, self.lr = num_classes, lr
        self.test_images, self.test_labels = test_images, torch.from_numpy(np.asarray(test_labels)).long()
        self.size, self.mean, self.std = size, mean, std
        self.layer: nn.Linear | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.history: list[dict[str, float]] = []
        self._captured: torch.Tensor | None = None
        self._capturing = False
        self._handle = None
        self._correct = self._seen = 0
        self._pending_state: dict | None = None

    # --- capturing the step's features ---------------------------------------------------

    def _hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if self._capturing and self._captured is None:  # the step's first backbone call: the online views
            self._captured = output.detach()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._handle = pl_module.backbone.register_forward_hook(self._hook)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._captured, self._capturing = None, True

    def _ensure_layer(self, dim: int, device: torch.device) -> None:
        if self.layer is None:
            with torch.random.fork_rng(devices=[]):  # leave pretraining's random stream as without the probe
                torch.manual_seed(0)
                self.layer = nn.Linear(dim, self.num_classes).to(device)
            self.optimizer = torch.optim.SGD(self.layer.parameters(), lr=self.lr, momentum=0.9)
            if self._pending_state is not None:  # resumed from a checkpoint
                self.layer.load_state_dict(self._pending_state["layer"])
                self.optimizer.load_state_dict(self._pending_state["optimizer"])
                self._pending_state = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._capturing = False
        features, labels = self._captured, batch.labels
        self._captured = None
        if features is None or labels is None:
            return
        n = min(features.shape[0], 2 * labels.shape[0])
        x = features[:n].float().flatten(1)
        y = labels.to(x.device).long().repeat(2)[:n]
        self._ensure_layer(x.shape[1], x.device)
        with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
            logits = self.layer(x)
            loss = F.cross_entropy(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self._correct += int((logits.argmax(1) == y).sum())
        self._seen += n
        pl_module.log("online/linear_loss", loss.detach(), prog_bar=False)

    # --- scoring ---------------------------------------------------------------------------

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.layer is None:
            return
        feats = extract_features(pl_module.backbone, self.test_images, self.size, self.mean, self.std)
        with torch.no_grad():
            pred = self.layer(feats.to(self.layer.weight.device)).argmax(1).cpu()
        top1 = float((pred == self.test_labels).double().mean())
        train_top1 = self._correct / max(1, self._seen)
        self._correct = self._seen = 0
        self.history.append({"epoch": trainer.current_epoch + 1, "top1": top1, "train_top1": train_top1})
        pl_module.log("online/linear_top1", top1, prog_bar=True, rank_zero_only=True)
        pl_module.log("online/linear_train_top1", train_top1, rank_zero_only=True)

    # --- resume: the layer, its optimiser and history travel in Lightning's checkpoint ----

    def state_dict(self) -> dict:
        if self.layer is None:
            return {"history": self.history}
        return {"layer": self.layer.state_dict(), "optimizer": self.optimizer.state_dict(), "history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
        if "layer" in state_dict:
            self._pending_state = state_dict
