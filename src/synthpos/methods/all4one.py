"""All4One (Estepa et al., ICCV 2023): neighbour, centroid and feature contrast in one objective.

Follows solo-learn's implementation (solo/methods/all4one.py), which is the authors' code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from synthpos.distributed import gather, world_size
from synthpos.errors import SynthposError
from synthpos.losses import MoCoLoss
from synthpos.methods.base import Outputs, register_method
from synthpos.methods.momentum import MomentumMethod
from synthpos.models.heads import mlp
from synthpos.models.memory import NearestNeighbourSupport
from synthpos.modes.contrast import NEGATIVES, Objective, Term

#: neighbours of each image the transformer summarises (solo-learn's 5)
NEIGHBOURS = 5
#: temperature of the centroid contrast (solo-learn calls nnclr_loss_func with its default 0.1 there)
CENTROID_TEMPERATURE = 0.1
#: scale of the feature contrast (solo-learn's ``* 10``)
FEATURE_SCALE = 10.0
TRANSFORMER_LAYERS, TRANSFORMER_HEADS = 3, 8


def token_encoding(tokens: int, dim: int) -> torch.Tensor:
    """The fixed table solo-learn adds to each token sequence (``Summer(PositionalEncodingPermute1D(tokens))``).

    That module treats the token axis as channels and the feature axis as positions, so
    entry (k, d) is ``sin(d * f_j)`` for k = 2j and ``cos(d * f_j)`` for k = 2j + 1, with
    ``f_j = 10000^(-2j / c)`` and c the number of tokens rounded up to even. Kept as it is:
    it is what All4One was trained with. Shape: (tokens, dim).
    """
    channels = 2 * math.ceil(tokens / 2)
    freq = 10000.0 ** (-torch.arange(0, channels, 2, dtype=torch.float64) / channels)  # (channels / 2,)
    angle = freq[:, None] * torch.arange(dim, dtype=torch.float64)[None, :]  # (channels / 2, dim)
    return torch.stack([angle.sin(), angle.cos()], dim=1).reshape(channels, dim)[:tokens].float()


def feature_contrast(m1: torch.Tensor, m2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """All4One's feature contrast: cross-correlations of momentum and online projections pushed to the identity.

    ``C = norm0(m1)^T norm0(z2)`` (and the same for m2, z1), where ``norm0`` scales each
    feature (column) to unit norm over the batch. The loss is
    ``0.5 * rms(diag(C) - 1) + 0.5 * rms(offdiag(C))``, the root-mean-squares taken over
    both matrices, times 10. Shape: four (N, D) -> ().
    """
    c1 = F.normalize(m1, dim=0).T @ F.normalize(z2, dim=0)  # (D, D)
    c2 = F.normalize(m2, dim=0).T @ F.normalize(z1, dim=0)
    off = ~torch.eye(c1.shape[0], dtype=torch.bool, device=c1.device)
    on_diagonal = (0.5 * ((c1.diagonal() - 1).pow(2).mean() + (c2.diagonal() - 1).pow(2).mean())).sqrt()
    off_diagonal = (0.5 * (c1[off].pow(2).mean() + c2[off].pow(2).mean())).sqrt()
    return FEATURE_SCALE * (0.5 * on_diagonal + 0.5 * off_diagonal)


@register_method("all4one")
class All4One(MomentumMethod):
    """All4One: ``0.5 * (centroid + neighbour + feature)`` contrast, with a momentum encoder and a support set.

    With ``m`` the L2-normalised momentum projection of a view and ``NN_1..NN_5(m)`` its
    five nearest neighbours in the support set (most similar first):

    - neighbour contrast (NNCLR): ``(CE(NN_1(m1) . p2^T / T) + CE(NN_1(m2) . p1^T / T)) / 2``,
      ``p = predictor(z)``;
    - centroid contrast: a 3-layer transformer encoder summarises a token sequence by its
      first output. The *rich* embedding summarises ``[NN_1..NN_5]``; the *shifted* one
      ``[s, NN_1..NN_4]`` with ``s = predictor2(z)`` of the same view; both sequences get
      :func:`token_encoding` added. Loss ``(CE(rich1 . shifted2^T / 0.1) + CE(rich2 .
      shifted1^T / 0.1)) / 2``;
    - feature contrast (redundancy reduction): :func:`feature_contrast`.

    Each CE takes the image's own index as target and the other images (of all ranks,
    gathered with gradient; solo-learn uses only its own rank's) as negatives; the feature
    contrast's correlations, too, are over the global batch. After each
    step the momentum encoder moves towards the online one (cosine schedule) and the
    ``m1`` of all ranks enter the support set.

    Defaults as solo-learn's CIFAR recipe (scripts/pretrain/cifar/all4one.yaml): projector
    3 layers (2048, 2048, 256) with BatchNorm after each, two predictors
    Linear(4096) - BatchNorm - ReLU - Linear(256), transformer width 256 with 8 heads,
    feed-forward 512, dropout 0.1, T 0.2, support set 98304, momentum 0.99 -> 1.0. Not
    followed: solo-learn trains the transformer with its own learning rate (0.1); here it
    follows the shared one, as the base gives every parameter the same rate. solo-learn's
    logging of neighbour labels and indices is left out (it does not change training).

    CLSP term: on ``p``, the vector the neighbour contrast scores (as NNCLR). Quality
    weights are not supported: the centroid and feature terms are not sums over pairs.
    MoCHi (``mochi``) adds synthetic negatives to the centroid contrast, whose rows ``rich``
    carry a gradient (through the transformer); not to the neighbour contrast (see NNCLR).
    """

    synthetic_key = "p"

    contrasts = frozenset({NEGATIVES})

    def build_heads(self) -> None:
        c = self.shared
        out = c.projector_out_dim
        if out % TRANSFORMER_HEADS:
            raise SynthposError(f"all4one: projector_out_dim={out} must be a multiple of "
                                f"{TRANSFORMER_HEADS} (the transformer's heads); set e.g. pretrain.projector_out_dim=256")
        if c.queue_size < NEIGHBOURS:
            raise SynthposError(f"all4one: queue_size={c.queue_size} is below the {NEIGHBOURS} neighbours it looks up; "
                                "set pretrain.queue_size larger (the recipe uses 98304)")
        self.projector = mlp(self.backbone.feature_dim, c.projector_hidden_dim, out, num_layers=3, batch_norm=True,
                             last_batch_norm=True)
        self.predictor = mlp(out, c.predictor_hidden_dim, out, batch_norm=True)
        self.shift_predictor = mlp(out, c.predictor_hidden_dim, out, batch_norm=True)
        layer = nn.TransformerEncoderLayer(d_model=out, nhead=TRANSFORMER_HEADS, dim_feedforward=2 * out, dropout=0.1,
                                           batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers=TRANSFORMER_LAYERS, enable_nested_tensor=False)
        self.register_buffer("tokens", token_encoding(NEIGHBOURS, out), persistent=False)
        self.support = NearestNeighbourSupport(c.queue_size, out)
        self._keys = torch.empty(0)

    def setup_losses(self) -> None:
        gather = world_size() > 1
        # Without a queue MoCoLoss is solo-learn's nnclr_loss_func: row i against all columns, target i.
        self.criterion = MoCoLoss(self.shared.temperature, gather_distributed=gather)
        self.centroid_criterion = MoCoLoss(CENTROID_TEMPERATURE, gather_distributed=gather)

    def embed(self, x: torch.Tensor) -> Outputs:
        z = self.projector(self.backbone(x))
        return {"z": z, "p": self.predictor(z), "shift": self.shift_predictor(z)}

    @torch.no_grad()
    def neighbours(self, m: torch.Tensor) -> torch.Tensor:
        """The ``NEIGHBOURS`` stored vectors most similar to each (unit) row of ``m``, most similar first.

        Shape: (N, D) -> (N, NEIGHBOURS, D).
        """
        bank = self.support.bank
        index = (m.to(bank) @ bank.T).topk(NEIGHBOURS, dim=1).indices  # (N, NEIGHBOURS)
        return bank[index].to(m.dtype)

    def summarise(self, sequence: torch.Tensor) -> torch.Tensor:
        """The transformer's first output token for each sequence. Shape: (N, NEIGHBOURS, D) -> (N, D)."""
        return self.transformer(sequence + self.tokens.to(sequence.dtype))[:, 0]

    def objective(self, outputs, views, batch) -> Objective:
        m1, m2 = (F.normalize(m, dim=1) for m in self.momentum_keys(views))
        nn1, nn2 = self.neighbours(m1), self.neighbours(m2)
        (z1, p1, s1), (z2, p2, s2) = ((o["z"], o["p"], o["shift"]) for o in outputs)

        neighbour = (self.criterion(nn1[:, 0], p2) + self.criterion(nn2[:, 0], p1)) / 2
        rich1, rich2 = self.summarise(nn1), self.summarise(nn2)
        # The shift: the view's own second prediction enters as the first token, the farthest neighbour leaves.
        shifted1 = self.summarise(torch.cat([s1.unsqueeze(1), nn1[:, :-1]], dim=1))
        shifted2 = self.summarise(torch.cat([s2.unsqueeze(1), nn2[:, :-1]], dim=1))
        self._keys = m1.detach()
        parts = {"neighbour": neighbour}

        def combine(values: list[torch.Tensor]) -> torch.Tensor:
            centroid = (values[0] + values[1]) / 2
            # Over the global batch (solo-learn: each rank's own), so that DDP trains as one process would.
            feature = feature_contrast(*(gather(t) for t in (m1, m2, z1, z2)))
            parts.update(centroid=centroid, feature=feature)
            return 0.5 * centroid + 0.5 * neighbour + 0.5 * feature

        # The terms a mode may add negatives to: the centroid contrast, rich against the other view's shifted
        # embeddings of the other images; not the neighbour term, whose rows are support-set vectors without gradient.
        return Objective([
            Term(lambda w, e: self.centroid_criterion(rich1, shifted2, extra_negatives=e), queries=rich1, in_batch=[shifted2]),
            Term(lambda w, e: self.centroid_criterion(rich2, shifted1, extra_negatives=e), queries=rich2, in_batch=[shifted1]),
        ], "all4one", combine=combine, logs=lambda values: dict(parts))

    def after_momentum_step(self) -> None:
        if self._keys.numel():
            self.support.enqueue(self._keys)
        self._keys = torch.empty(0)
