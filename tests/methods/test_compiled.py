"""pretrain.compile: the backbone and heads compiled in place, nothing else changed."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from synthpos.config import PretrainConfig
from synthpos.data import BatchAugment
from synthpos.data.batch import PretrainBatch
from synthpos.methods import compiled
from synthpos.methods.mocov2plus import MoCoV2Plus
from synthpos.methods.simclr import SimCLR
from synthpos.models.backbones import ConvNet

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _batch(n: int = 8) -> PretrainBatch:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    return PretrainBatch(indices=torch.arange(n), images=images, labels=torch.zeros(n, dtype=torch.long))


def test_compile_method_compiles_backbone_and_heads_and_keeps_the_state_dict(monkeypatch):
    # The eager backend runs dynamo's capture without inductor's code generation: the wiring, not the kernels.
    monkeypatch.setattr(compiled, "COMPILE_OPTIONS", {"backend": "eager"})
    torch.manual_seed(0)
    method = SimCLR(ConvNet(1, width=8), BatchAugment(crop_size=28), projector_hidden_dim=32, projector_out_dim=16)
    method.setup("fit")
    plain = copy.deepcopy(method)
    done = compiled.compile_method(method)
    assert done == [method.backbone, method.projector]
    assert all(m._compiled_call_impl is not None for m in done)
    assert method.augment._compiled_call_impl is None  # random draws and Python control flow stay eager
    assert list(method.state_dict()) == list(plain.state_dict())  # checkpoints and backbone.pt unchanged
    torch.manual_seed(1)
    loss, _ = method.compute_loss(_batch())
    torch.manual_seed(1)
    expected, _ = plain.compute_loss(_batch())
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is not None for p in method.backbone.parameters())  # backward through the compiled graph


def test_momentum_copies_are_compiled_too(monkeypatch):
    monkeypatch.setattr(compiled, "COMPILE_OPTIONS", {"backend": "eager"})
    method = MoCoV2Plus(ConvNet(1, width=8), BatchAugment(crop_size=28), PretrainConfig(
        method="mocov2plus", projector_hidden_dim=32, projector_out_dim=16, queue_size=64))
    names = {name for name, child in method.named_children() if child in compiled.compile_method(method)}
    assert {"backbone"} < names and "augment" not in names


def test_compile_is_a_pretrain_key_that_changes_only_speed():
    from synthpos.config import load_config
    from synthpos.stages import STAGES

    assert PretrainConfig(method="simclr").compile is False
    assert PretrainConfig(method="simclr", compile=True).compile is True
    pretrain = next(s for s in STAGES if s.name == "pretrain")
    assert "pretrain.compile" in pretrain.left_out(load_config(None))


@pytest.mark.slow
@pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed")
def test_pretrain_with_compile_trains_the_same_backbone(tmp_path, monkeypatch):
    """pretrain.compile=true through Lightning: with the capture-only backend, bit for bit the uncompiled run."""
    from synthpos.config import load_config
    from synthpos.methods.pretrain import pretrain_stage
    from synthpos.models.backbones import load_backbone

    monkeypatch.setattr(compiled, "COMPILE_OPTIONS", {"backend": "eager"})
    calls = []
    monkeypatch.setattr(compiled, "compile_method", lambda m, _real=compiled.compile_method: calls.append(1) or _real(m))
    backbones = {}
    for flag in ("false", "true"):
        config = load_config(None, [
            f"run_dir={tmp_path / flag}", "data.subset=64", "pretrain.backbone.name=convnet", "pretrain.backbone.width=8",
            "pretrain.projector_hidden_dim=32", "pretrain.projector_out_dim=16", "pretrain.batch_size=32",
            "pretrain.epochs=1", "pretrain.precision=fp32", "pretrain.augment.crop_size=28",
            "pretrain.optimizer.warmup_epochs=0", "pretrain.accelerator=cpu", f"pretrain.compile={flag}",
        ])
        backbones[flag] = load_backbone(pretrain_stage(config, show_progress=False)).state_dict()
    assert calls == [1]  # only the run that asked for it
    assert backbones["true"].keys() == backbones["false"].keys()
    assert all(torch.equal(backbones["true"][k], backbones["false"][k]) for k in backbones["false"])
