"""NNCLR (Dwibedi et al., ICCV 2021): nearest neighbours from a support set as positives."""

from __future__ import annotations

import torch

from synthpos.distributed import world_size
from synthpos.losses import MoCoLoss
from synthpos.methods.base import Outputs, SSLMethod, register_method
from synthpos.models.heads import mlp
from synthpos.models.memory import NearestNeighbourSupport
from synthpos.modes.contrast import PAIRS, Objective, Term


@register_method("nnclr")
class NNCLR(SSLMethod):
    """NNCLR: each view's projection is replaced by its nearest neighbour in a support set
    of past projections, which must pick out the other view's prediction among the batch.

    Loss (solo-learn's ``nnclr_loss_func``, the paper's eq. 2, symmetrised)::

        (CE(NN(z1) . p2^T / T, own index) + CE(NN(z2) . p1^T / T, own index)) / 2

    Rows are the neighbours, columns the predictions of all images (of all ranks: the
    predictions are gathered with gradient, where solo-learn uses only its own rank's);
    only the predictions carry a gradient. This is not lightly's NTXent form, which also
    contrasts each vector with the views of its own side. The neighbour is looked up
    among the stored unit vectors by cosine similarity; after each step the projections
    ``z1`` of all ranks enter the support set. Quality weights multiply each row's
    cross-entropy.

    Heads and defaults as solo-learn's CIFAR recipe (scripts/pretrain/cifar/nnclr.yaml):
    projector 3 layers (2048, 2048, 256) with BatchNorm after each, predictor
    Linear(4096) - BatchNorm - ReLU - Linear(256), T 0.2, support set 65536.

    CLSP term: on ``p``, the vector the loss scores against its positive (as MoCo's
    query), so the synthetic view's prediction joins view 1's in the contrasted space.

    No ``mochi``: each row's vector is a support-set neighbour without gradient, so MoCHi's
    detached mixes appended to a row would move no parameter (they would only rescale the
    row's softmax over the real predictions).
    """

    synthetic_key = "p"

    contrasts = frozenset({PAIRS})  # no NEGATIVES: see above

    def build_heads(self) -> None:
        c = self.shared
        self.projector = mlp(self.backbone.feature_dim, c.projector_hidden_dim, c.projector_out_dim, num_layers=3,
                             batch_norm=True, last_batch_norm=True)
        self.predictor = mlp(c.projector_out_dim, c.predictor_hidden_dim, c.projector_out_dim, batch_norm=True)
        self.support = NearestNeighbourSupport(c.queue_size, c.projector_out_dim)
        self._projections = torch.empty(0)

    def setup_losses(self) -> None:
        # MoCoLoss without a queue is exactly this contrast: row i (here a neighbour) against
        # column j (a prediction), target i, negatives the other images' predictions.
        self.criterion = MoCoLoss(self.shared.temperature, gather_distributed=world_size() > 1)

    def embed(self, x: torch.Tensor) -> Outputs:
        z = self.projector(self.backbone(x))
        return {"z": z, "p": self.predictor(z)}

    def objective(self, outputs, views, batch) -> Objective:
        (z1, p1), (z2, p2) = ((o["z"], o["p"]) for o in outputs)
        nn1, nn2 = self.support.nearest(z1), self.support.nearest(z2)
        self._projections = z1.detach()
        # No queries for extra negatives: each row is a support-set neighbour without gradient.
        return Objective([Term(lambda w, e: self.criterion(nn1, p2, weights=w), weighted=True),
                          Term(lambda w, e: self.criterion(nn2, p1, weights=w), weighted=True)],
                         "nnclr", combine=lambda v: (v[0] + v[1]) / 2)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # After the optimiser step: this step's neighbours came from the support set as it was.
        if self._projections.numel():
            self.support.enqueue(self._projections)
        self._projections = torch.empty(0)
