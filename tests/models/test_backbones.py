"""Backbones: the exported state_dict is plain torchvision's, shapes, save/load round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from synthpos.config import BackboneConfig
from synthpos.errors import SynthposError
from synthpos.models.backbones import build_backbone, load_backbone, save_backbone


def _randomise_bn(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics, so a load that skipped buffers would give other outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("channels", [1, 3])
def test_resnet18_cifar_stem_loads_into_plain_torchvision(tmp_path: Path, channels: int) -> None:
    torch.manual_seed(0)
    config = BackboneConfig(name="resnet18", cifar_stem=True)
    ours = build_backbone(config, channels)
    _randomise_bn(ours)
    path = tmp_path / "backbone.pt"
    save_backbone(ours, config, channels, path)

    # The reference: torchvision's resnet18 with the CIFAR stem written out by hand.
    ref = torchvision.models.resnet18(weights=None)
    ref.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    ref.maxpool = nn.Identity()
    ref.fc = nn.Identity()
    state = torch.load(path, map_location="cpu", weights_only=True)
    ref.load_state_dict(state, strict=True)  # raises on any missing or unexpected key

    x = torch.randn(3, channels, 28, 28, generator=torch.Generator().manual_seed(1))
    ours.eval(), ref.eval()
    with torch.no_grad():
        out, expected = ours(x), ref(x)
    assert out.shape == (3, 512)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # A stride-2 stem with max-pool would reduce 28 px to 1x1 before layer4; ours keeps 4x4.
    with torch.no_grad():
        spatial = ours.layer4(ours.layer3(ours.layer2(ours.layer1(ours.relu(ours.bn1(ours.conv1(x)))))))
    assert spatial.shape[-2:] == (4, 4)


def test_resnet18_imagenet_stem_is_torchvision_resnet18() -> None:
    net = build_backbone(BackboneConfig(name="resnet18", cifar_stem=False), 3)
    ref = torchvision.models.resnet18(weights=None)
    ref.fc = nn.Identity()
    ref.load_state_dict(net.state_dict(), strict=True)
    assert isinstance(net.maxpool, nn.MaxPool2d) and net.conv1.stride == (2, 2)


@pytest.mark.parametrize(
    ("name", "width", "feature_dim"),
    [("resnet18", 32, 512), ("resnet50", 32, 2048), ("small_resnet", 4, 32), ("convnet", 8, 64)],
)
def test_output_shape_and_feature_dim(name: str, width: int, feature_dim: int) -> None:
    net = build_backbone(BackboneConfig(name=name, width=width), 1).eval()
    assert net.feature_dim == feature_dim
    with torch.no_grad():
        out = net(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, feature_dim)


@pytest.mark.parametrize(("name", "channels"), [("convnet", 1), ("small_resnet", 3)])
def test_save_load_round_trip(tmp_path: Path, name: str, channels: int) -> None:
    torch.manual_seed(0)
    config = BackboneConfig(name=name, width=4, cifar_stem=True)
    net = build_backbone(config, channels)
    _randomise_bn(net)
    path = tmp_path / "sub" / "backbone.pt"
    save_backbone(net, config, channels, path)

    spec = json.loads(path.with_suffix(".json").read_text())
    assert spec["backbone"]["name"] == name and spec["backbone"]["width"] == 4
    assert spec["in_channels"] == channels and spec["feature_dim"] == net.feature_dim
    assert not list(path.parent.glob("*.tmp"))

    loaded = load_backbone(path)
    assert type(loaded) is type(net) and loaded.feature_dim == net.feature_dim
    for key, value in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    x = torch.randn(2, channels, 16, 16)
    net.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)


def test_save_from_channels_last_model_loads(tmp_path: Path) -> None:
    config = BackboneConfig(name="convnet", width=4)
    net = build_backbone(config, 1).to(memory_format=torch.channels_last)
    save_backbone(net, config, 1, tmp_path / "b.pt")
    state = torch.load(tmp_path / "b.pt", weights_only=True)
    assert all(v.is_contiguous() for v in state.values())
    load_backbone(tmp_path / "b.pt")


def test_missing_weights_is_a_synthpos_error(tmp_path: Path) -> None:
    with pytest.raises(SynthposError, match="backbone.pt"):
        load_backbone(tmp_path / "backbone.pt")


def test_missing_description_is_a_synthpos_error(tmp_path: Path) -> None:
    config = BackboneConfig(name="convnet", width=4)
    save_backbone(build_backbone(config, 1), config, 1, tmp_path / "backbone.pt")
    (tmp_path / "backbone.json").unlink()
    with pytest.raises(SynthposError, match="backbone.json"):
        load_backbone(tmp_path / "backbone.pt")


def test_weights_that_do_not_fit_are_a_synthpos_error(tmp_path: Path) -> None:
    config = BackboneConfig(name="convnet", width=4)
    save_backbone(build_backbone(config, 1), config, 1, tmp_path / "backbone.pt")
    spec = json.loads((tmp_path / "backbone.json").read_text())
    spec["backbone"]["width"] = 8
    (tmp_path / "backbone.json").write_text(json.dumps(spec))
    with pytest.raises(SynthposError, match="does not fit"):
        load_backbone(tmp_path / "backbone.pt")


def test_truncated_weights_are_a_synthpos_error(tmp_path: Path) -> None:
    config = BackboneConfig(name="convnet", width=4)
    save_backbone(build_backbone(config, 1), config, 1, tmp_path / "backbone.pt")
    data = (tmp_path / "backbone.pt").read_bytes()
    (tmp_path / "backbone.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(SynthposError, match="backbone.pt"):
        load_backbone(tmp_path / "backbone.pt")
