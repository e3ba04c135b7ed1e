"""Methods are built from plain arguments (their shared hyper-parameters, their own settings, their mode),
never from the ``pretrain`` section: built both ways they are the same module and give the same loss, and
built from plain arguments no built-in method reads a config (``method.config`` is None then)."""

from __future__ import annotations

import pytest
import torch

from synthpos.config import OptimizerConfig, PretrainConfig, SyntheticConfig
from synthpos.data.augment import BatchAugment
from synthpos.data.batch import PretrainBatch
from synthpos.methods.base import SharedSettings, method_arguments
from synthpos.models.backbones import ConvNet
from synthpos.registry import METHODS, MODES

BUILTIN = sorted(name for name, cls in METHODS.items() if cls.__module__.startswith("synthpos."))
SIZES = dict(projector_hidden_dim=16, projector_out_dim=8, predictor_hidden_dim=16, temperature=0.3, queue_size=16)


def _batch() -> PretrainBatch:
    g = torch.Generator().manual_seed(0)
    return PretrainBatch(indices=torch.arange(8), images=torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8, generator=g),
                         labels=torch.arange(8) % 2)


def _step(method) -> torch.Tensor:
    method.setup("fit")
    torch.manual_seed(1)  # the same augmentation draws for both builds
    loss, _ = method.compute_loss(_batch())
    return loss


@pytest.mark.parametrize("name", BUILTIN)
def test_a_method_from_plain_arguments_equals_the_one_read_from_its_config(name: str) -> None:
    cls = METHODS.get(name)
    config = PretrainConfig(method=name, channels_last=False, momentum={"base": 0.9, "final": 0.95},
                            optimizer=OptimizerConfig(lr=0.1), **SIZES)
    torch.manual_seed(0)
    from_config = cls(ConvNet(1, width=4), BatchAugment(crop_size=8), config)

    shared = SharedSettings(momentum_base=0.9, momentum_final=0.95, **SIZES)
    options = cls.settings() if cls.settings is not None else None
    torch.manual_seed(0)
    plain = cls(ConvNet(1, width=4), BatchAugment(crop_size=8), shared=shared, options=options,
                mode=MODES.get("none")(SyntheticConfig()), optimizer=OptimizerConfig(lr=0.1), channels_last=False)

    assert plain.config is None and from_config.config is config
    assert plain.shared == from_config.shared == SharedSettings.from_config(config)
    assert plain.optimizer_config == from_config.optimizer_config
    state, other = plain.state_dict(), from_config.state_dict()
    assert state.keys() == other.keys() and all(torch.equal(state[k], other[k]) for k in state)
    loss = _step(plain)
    assert torch.isfinite(loss) and torch.equal(loss, _step(from_config))


def test_method_arguments_read_the_section_once() -> None:
    config = PretrainConfig(method="dclw", dclw={"sigma": 0.7}, synthetic=SyntheticConfig(mode="clsp", weight=0.3), **SIZES)
    args = method_arguments(config, BatchAugment(crop_size=8))
    assert args["options"].sigma == 0.7 and args["shared"].temperature == 0.3
    assert args["mode"].name == "clsp" and args["mode"].config.weight == 0.3
    assert args["synthetic_augment"] is None and args["optimizer"] == config.optimizer


def test_plain_arguments_and_a_config_together_are_refused() -> None:
    cls = METHODS.get("simclr")
    with pytest.raises(TypeError, match="not both"):
        cls(ConvNet(1, width=4), BatchAugment(crop_size=8), PretrainConfig(), shared=SharedSettings(**SIZES, momentum_base=0.9,
                                                                                                   momentum_final=1.0))
