"""Backbones: CIFAR-stem ResNets (torchvision) and small CPU-sized encoders.

A backbone maps images (B, C, H, W) to features (B, D) and has ``feature_dim``.
Its weights are exported as a plain ``state_dict`` of the module built by
:func:`build_backbone`: for ``resnet18``/``resnet50`` that is torchvision's ResNet
with the CIFAR stem (3x3 stride-1 ``conv1``, no max-pool) and ``fc = Identity``,
so ``torchvision.models.resnet18()`` with the same two changes loads it as it is.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
import torchvision
from torch import nn

from synthpos.atomic import atomic_path
from synthpos.config import BackboneConfig
from synthpos.errors import SynthposError
from synthpos.provenance import provenance as make_provenance


def _torchvision_resnet(name: str, in_channels: int, cifar_stem: bool) -> nn.Module:
    net = getattr(torchvision.models, name)(weights=None)
    if cifar_stem:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A ResNet-10-like encoder: CIFAR stem and one basic block per stage.

    Widths (w, 2w, 4w, 8w); strides 1, 2, 2, 2. Shape: (B, C, H, W) -> (B, 8w).
    """

    def __init__(self, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        widths = [width, 2 * width, 4 * width, 8 * width]
        blocks, cin = [], width
        for i, cout in enumerate(widths):
            blocks.append(_BasicBlock(cin, cout, 1 if i == 0 else 2))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(self.stem(x))).flatten(1)


class ConvNet(nn.Module):
    """Four conv-BN-ReLU layers (widths w, 2w, 4w, 8w; the last three stride 2), then average pooling.

    With w=32 it has 0.39M parameters. Shape: (B, C, H, W) -> (B, 8w).
    """

    def __init__(self, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        layers, cin = [], in_channels
        for i, cout in enumerate([width, 2 * width, 4 * width, 8 * width]):
            layers += [nn.Conv2d(cin, cout, 3, 1 if i == 0 else 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


def feature_map(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The backbone's last spatial features, before global pooling. Shape: (B, C, H, W) -> (B, D, h, w)."""
    if isinstance(backbone, ConvNet):
        return backbone.features(x)
    if isinstance(backbone, SmallResNet):
        return backbone.blocks(backbone.stem(x))
    if isinstance(backbone, torchvision.models.ResNet):
        x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
        return backbone.layer4(backbone.layer3(backbone.layer2(backbone.layer1(x))))
    raise TypeError(f"no feature map known for {type(backbone).__name__}")


def build_backbone(config: BackboneConfig, in_channels: int) -> nn.Module:
    """The encoder named by ``config``; it has a ``feature_dim`` attribute."""
    if config.name in ("resnet18", "resnet50"):
        return _torchvision_resnet(config.name, in_channels, config.cifar_stem)
    if config.name == "small_resnet":
        return SmallResNet(in_channels, config.width)
    return ConvNet(in_channels, config.width)


def save_backbone(backbone: nn.Module, config: BackboneConfig, in_channels: int, path: Path,
                  provenance: dict | None = None) -> None:
    """Write ``path`` (a plain state_dict) and ``path.with_suffix('.json')`` (how to rebuild it).

    ``provenance``: what made it (:func:`synthpos.provenance.provenance` of the run's config);
    default: that of ``config`` alone.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = {"backbone": config.model_dump(), "in_channels": in_channels, "feature_dim": backbone.feature_dim,
            "provenance": provenance if provenance is not None else make_provenance(config)}
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}, tmp)
        # The description first: a backbone.pt that exists always has its .json.
        path.with_suffix(".json").write_text(json.dumps(spec, indent=2))


def load_backbone(path: Path) -> nn.Module:
    """Rebuild a backbone written by :func:`save_backbone`.

    Raises:
        SynthposError: the weights or their ``.json`` description are missing or do not fit.
    """
    path = Path(path)
    spec_path = path.with_suffix(".json")
    if not path.is_file() or not spec_path.is_file():
        raise SynthposError(
            f"backbone {path} (and its {spec_path.name}) not found; run `synthpos pretrain --config FILE` first "
            "or set evaluate.checkpoint to a backbone.pt written by synthpos"
        )
    spec = json.loads(spec_path.read_text())
    backbone = build_backbone(BackboneConfig(**spec["backbone"]), spec["in_channels"])
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as err:
        # A truncated or foreign file: torch raises OSError for a broken zip, RuntimeError or
        # UnpicklingError for other damage.
        raise SynthposError(
            f"backbone {path} cannot be read ({err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else 'corrupt file'}); "
            "it is truncated or not a synthpos backbone: pretrain again or point evaluate.checkpoint at another file"
        ) from err
    try:
        backbone.load_state_dict(state)
    except (RuntimeError, EOFError, ValueError) as err:
        raise SynthposError(f"backbone {path} does not fit the architecture in {spec_path.name}: {str(err).splitlines()[0]}") from err
    return backbone
