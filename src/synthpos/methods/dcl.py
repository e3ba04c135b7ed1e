"""DCL and DCLW (Yeh et al., 2022): SimCLR with the positive pair removed from the denominator."""

from __future__ import annotations

from torch import nn

from synthpos.config import PretrainConfig
from synthpos.data.augment import BatchAugment
from synthpos.distributed import world_size
from synthpos.losses import DCLLoss, DCLWLoss
from synthpos.methods.simclr import SimCLR


class DCL(SimCLR):
    """Decoupled contrastive learning: SimCLR's architecture with :class:`~synthpos.losses.DCLLoss`."""

    def setup_losses(self) -> None:
        super().setup_losses()
        self.criterion = DCLLoss(self.temperature, gather_distributed=world_size() > 1)

    def pair_loss(self, outputs, views, batch, weights):
        loss = self.criterion(outputs[0]["z"], outputs[1]["z"], weights=weights)
        return loss, {"dcl": loss}


class DCLW(DCL):
    """DCL with positives weighted by a von Mises-Fisher kernel of width ``sigma`` (:class:`~synthpos.losses.DCLWLoss`)."""

    def __init__(self, *args, sigma: float = 0.5, **kwargs) -> None:
        self.sigma = sigma
        super().__init__(*args, **kwargs)

    @classmethod
    def from_config(cls, cfg: PretrainConfig, backbone: nn.Module, augment: BatchAugment, scorer=None) -> DCLW:
        return cls(backbone, augment, cfg.optimizer, cfg.projector_hidden_dim, cfg.projector_out_dim, cfg.temperature,
                   cfg.channels_last, cfg.synthetic, scorer, sigma=cfg.dclw_sigma)

    def setup_losses(self) -> None:
        SimCLR.setup_losses(self)
        self.criterion = DCLWLoss(self.temperature, self.sigma, gather_distributed=world_size() > 1)
