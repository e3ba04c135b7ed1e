"""Backbones and heads."""

from synthpos.models.backbones import ConvNet, SmallResNet, build_backbone, load_backbone, save_backbone

__all__ = ["ConvNet", "SmallResNet", "build_backbone", "load_backbone", "save_backbone"]
