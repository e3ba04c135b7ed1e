"""The switches that let a recipe match the official code: weight decay on every parameter
and BatchNorm statistics per view."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from synthpos.config import AugmentConfig, BackboneConfig, OptimizerConfig, PretrainConfig
from synthpos.data import ImageDataset
from synthpos.data.batch import PretrainBatch
from synthpos.methods.optim import parameter_groups
from synthpos.methods.pretrain import build_method

SIZE = 12


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 10 * 10, 3))


def _sgd_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    x = torch.randn(8, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()


def test_weight_decay_on_all_parameters_equals_plain_sgd() -> None:
    # The reference is the official code's optimiser: SGD(model.parameters(), weight_decay=wd).
    reference, ours, exempt = _model(), _model(), _model()
    _sgd_step(reference, torch.optim.SGD(reference.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1))
    _sgd_step(ours, torch.optim.SGD(parameter_groups(ours, 0.1, exclude_bias_and_norm=False), lr=0.5, momentum=0.9))
    _sgd_step(exempt, torch.optim.SGD(parameter_groups(exempt, 0.1), lr=0.5, momentum=0.9))
    for a, b in zip(reference.parameters(), ours.parameters()):
        assert torch.allclose(a, b, atol=1e-7)
    # The default exempts biases: the last layer's bias moves differently.
    assert not torch.allclose(reference[3].bias, exempt[3].bias, atol=1e-6)
    assert OptimizerConfig().exclude_bias_and_norm is True


def _method(method: str, per_view: bool):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(8, SIZE, SIZE, 1), dtype=np.uint8)
    dataset = ImageDataset("toy", "train", images, np.arange(8) % 2, ["a", "b"], (0.5,), (0.25,))
    cfg = PretrainConfig(method=method, backbone=BackboneConfig(name="convnet", width=4), projector_hidden_dim=16,
                         projector_out_dim=8, predictor_hidden_dim=16, queue_size=16, batch_size=8, channels_last=False,
                         precision="fp32", per_view_batchnorm=per_view, augment=AugmentConfig(crop_size=SIZE))
    torch.manual_seed(0)
    return build_method(cfg, dataset)


def _views() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    # Two views with very different statistics, so batching them together changes every BN output.
    return [torch.randn(8, 1, SIZE, SIZE, generator=g), 3.0 + 2.0 * torch.randn(8, 1, SIZE, SIZE, generator=g)]


def test_per_view_batchnorm_uses_each_views_own_statistics() -> None:
    views = _views()
    for per_view in (True, False):
        method = _method("mocov2plus", per_view).train()
        alone = [method.embed(v)["z"] for v in views]  # BN in train mode: the statistics of this view alone
        together = method.embed_views(views)
        same = all(torch.allclose(t["z"], a, atol=1e-5) for t, a in zip(together, alone))
        assert same is per_view
        # The momentum (key) encoder too, as the official MoCo forwards encoder_k per view.
        keys = method.forward_views(method.momentum_encoder, views)
        keys_alone = [method.momentum_encoder(v).float() for v in views]
        assert all(torch.allclose(k, a, atol=1e-5) for k, a in zip(keys, keys_alone)) is per_view


def test_per_view_batchnorm_trains_a_step() -> None:
    method = _method("mocov2plus", True).train()
    images = torch.randint(0, 256, (8, 1, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    loss, _ = method.compute_loss(PretrainBatch(indices=torch.arange(8), images=images))
    loss.backward()
    assert torch.isfinite(loss)
    assert PretrainConfig().per_view_batchnorm is False


def test_pretrain_with_every_official_switch(tmp_path) -> None:
    # The CLSP-MoCo switches and the GenerativeSSL blur together, through the real training loop.
    import json

    from synthpos.methods.pretrain import build_augment, pretrain

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(16, SIZE, SIZE, 3), dtype=np.uint8)
    dataset = ImageDataset("toy", "train", images, np.arange(16) % 2, ["a", "b"], (0.5,) * 3, (0.25,) * 3)
    cfg = PretrainConfig(
        method="mocov2plus", backbone=BackboneConfig(name="convnet", width=4), projector_hidden_dim=16, projector_out_dim=8,
        queue_size=16, batch_size=8, epochs=1, channels_last=False, precision="fp32", accelerator="cpu", per_view_batchnorm=True,
        augment=AugmentConfig(crop_size=SIZE, saturation=0.2, solarize_prob=0.2, blur_prob=0.5, blur_sigma=(0.1, 1.0)),
        optimizer=OptimizerConfig(lr=0.1, warmup_epochs=0, exclude_bias_and_norm=False),
    )
    augment = build_augment(cfg, dataset)
    assert (augment.solarize_prob, augment.blur_prob, augment.blur_kernel_size) == (0.2, 0.5, 7)
    pretrain(cfg, dataset, tmp_path, show_progress=False)
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 2
