"""Encoders to compare: synthpos backbones and reference encoders from local folders.

An :class:`Encoder` turns uint8 images (N, H, W, C) into its final features and, for
layer-wise CKA, the outputs of its blocks. Accepted, with no network access:

- a synthpos ``backbone.pt`` (beside its ``backbone.json``), or a run / pretrain directory
  holding one (``<dir>/backbone.pt`` or ``<dir>/pretrain/backbone.pt``);
- a TorchScript file (``torch.jit.save``) mapping images normalised with the data's mean
  and std at the evaluation size, (B, C, s, s), to features (B, ...): final features only;
- a torchvision or timm ``state_dict`` file with ``arch`` naming the architecture
  (``torchvision:resnet50``, ``timm:resnet18``, or a bare name: torchvision's first, then
  timm's): the classifier is dropped, ImageNet normalisation at ``size``;
- a folder that ``transformers`` loads as a CLIP vision model (``config.json`` of a
  ``CLIPModel`` or ``CLIPVisionModel[WithProjection]``): the image embedding (or the pooled
  output), CLIP's normalisation at the model's image size; its encoder layers for CKA.

Grey images are repeated to three channels for encoders that take colour.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from synthpos.data.augment import to_model_input
from synthpos.data.stream import decoded_chunks
from synthpos.errors import SynthposError

__all__ = ["Encoder", "load_encoder", "resolve_backbone", "block_modules"]

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def block_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules whose outputs layer-wise CKA compares, in forward order.

    ResNets (torchvision, synthpos): the stem and each residual block; ConvNet: each ReLU;
    other models: the children of every ``nn.Sequential``/``nn.ModuleList`` that are not
    containers themselves.
    """
    import torchvision

    from synthpos.models.backbones import ConvNet, SmallResNet

    if isinstance(model, torchvision.models.ResNet):
        out = [("stem", model.relu)]
        for name in ("layer1", "layer2", "layer3", "layer4"):
            out += [(f"{name}.{i}", block) for i, block in enumerate(getattr(model, name))]
        return out
    if isinstance(model, SmallResNet):
        return [("stem", model.stem)] + [(f"block{i}", b) for i, b in enumerate(model.blocks)]
    if isinstance(model, ConvNet):
        relus = [(f"relu{i}", m) for i, m in enumerate(m for m in model.features if isinstance(m, nn.ReLU))]
        return relus
    found = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Sequential, nn.ModuleList)):
            found += [(f"{name}.{n}" if name else n, c) for n, c in module.named_children()
                      if not isinstance(c, (nn.Sequential, nn.ModuleList))]
    return found


@dataclass
class Encoder:
    """A frozen encoder and how its input is made from uint8 images."""

    name: str
    model: nn.Module
    prepare: Callable[[torch.Tensor], torch.Tensor]  # uint8 (B, C, H, W) -> the model's input
    layers: list[tuple[str, nn.Module]] = field(default_factory=list)
    output: Callable[[object], torch.Tensor] = lambda out: out  # the model's output -> final features (B, D)
    layer_output: Callable[[object], torch.Tensor] = lambda out: out
    reader: str = "synthpos"  # which reader accepted it: synthpos, torchscript, state_dict or clip

    @torch.no_grad()
    def batches(self, images: np.ndarray, batch_size: int = 256, with_layers: bool = False, num_workers: int = 0):
        """Per minibatch: final features (B, D) and, with ``with_layers``, each block's output flattened (B, D_l).

        ``images``: uint8 (N, H, W, C), an array or a streamed split, whose batches ``num_workers``
        processes decode (:func:`~synthpos.data.stream.decoded_chunks`).
        """
        self.model.eval()
        captured: list[torch.Tensor] = []
        handles = []
        if with_layers:
            for _, module in self.layers:
                handles.append(module.register_forward_hook(
                    lambda m, i, o: captured.append(self.layer_output(o).detach().float().flatten(1).cpu())))
        try:
            for chunk in decoded_chunks(images, batch_size, num_workers):
                batch = torch.from_numpy(chunk).permute(0, 3, 1, 2)
                captured.clear()
                final = self.output(self.model(self.prepare(batch))).float().flatten(1).cpu()
                if with_layers and len(captured) != len(self.layers):
                    # torchvision's ResNet calls its one stem ReLU once, but a module called twice would add rows.
                    raise SynthposError(f"{self.name}: {len(captured)} layer outputs for {len(self.layers)} layers "
                                        "(a module is called more than once); compare final features only")
                yield final, list(captured)
        finally:
            for h in handles:
                h.remove()


def _channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if channels == 3 and x.shape[1] == 1:
        return x.repeat(1, 3, 1, 1)
    if channels == 1 and x.shape[1] == 3:
        return (x.float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True).round().to(x.dtype)
    raise SynthposError(f"images have {x.shape[1]} channels but the encoder takes {channels}")


def _stats(values, channels: int) -> tuple[float, ...]:
    """Per-channel mean or std of the data, converted as the images are (grey <-> RGB)."""
    values = tuple(values)
    if len(values) == channels:
        return values
    if channels == 3:
        return values * 3
    return (float(np.dot(values, [0.299, 0.587, 0.114])),)


def resolve_backbone(path: Path) -> Path | None:
    """The synthpos backbone.pt a path names (a file, a pretrain dir or a run dir), or None."""
    path = Path(path)
    for cand in (path, path / "backbone.pt", path / "pretrain" / "backbone.pt"):
        if cand.is_file() and cand.with_suffix(".json").is_file():
            return cand
    return None


def _in_channels(model: nn.Module) -> int:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3


def load_encoder(path: Path, size: int, mean, std, arch: str | None = None, arch_key: str = "--arch") -> Encoder:
    """The encoder stored at ``path`` (see the module docstring).

    Args:
        size, mean, std: the data's evaluation input (synthpos backbones and TorchScript files).
        arch: torchvision or timm architecture of a plain state_dict file.
        arch_key: how the user names ``arch`` (``--arch``, ``evaluate.arch``), for the messages.

    Raises:
        SynthposError: nothing loadable there, or a state_dict without ``arch`` or not fitting it.
    """
    path = Path(path)
    backbone = resolve_backbone(path)
    if backbone is not None:
        from synthpos.models.backbones import load_backbone

        model = load_backbone(backbone)
        c = _in_channels(model)
        m, s = _stats(mean, c), _stats(std, c)
        return Encoder(str(backbone), model, lambda x: to_model_input(_channels(x, c), size, m, s), block_modules(model))
    if path.is_dir() and (path / "config.json").is_file():
        return _clip_encoder(path)
    if not path.is_file():
        raise SynthposError(f"{path} is neither a synthpos backbone (backbone.pt + backbone.json, or a run directory "
                            "with one), a CLIP folder (config.json), nor a TorchScript or state_dict file")
    try:
        model = torch.jit.load(str(path), map_location="cpu")
        # The channels its first convolution takes (an RGB model given grey data, or the reverse), else the data's.
        conv = next((p for p in model.parameters() if p.dim() == 4), None)
        c = conv.shape[1] if conv is not None and conv.shape[1] in (1, 3) else (3 if len(mean) == 3 else 1)
        m, s = _stats(mean, c), _stats(std, c)
        return Encoder(str(path), model, lambda x: to_model_input(_channels(x, c), size, m, s), reader="torchscript")
    except (RuntimeError, ValueError):
        pass  # not TorchScript: a state_dict
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SynthposError(f"{path} cannot be read as TorchScript or as a state_dict ({err.__class__.__name__})") from err
    if not isinstance(state, dict):
        raise SynthposError(f"{path} holds a {type(state).__name__}, not a state_dict")
    if arch is None:
        raise SynthposError(f"{path} is a state_dict: name its architecture with {arch_key} (a torchvision or timm "
                            f"model, e.g. {arch_key} torchvision:resnet50 or timm:resnet18)")
    model = _architecture(arch, arch_key)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a parameter of another shape (strict=False forgives only names)
        detail = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), "shapes differ")
        raise SynthposError(f"{path} does not fit {arch}: {detail[:200]}; check {arch_key}") from None
    head = ("fc.", "head.", "classifier.")
    unexpected = [k for k in unexpected if not k.startswith(head)]
    if missing or unexpected:
        raise SynthposError(f"{path} does not fit {arch}: missing {missing[:3]}, unexpected {unexpected[:3]}; "
                            f"check {arch_key}")
    mean_i, std_i = IMAGENET
    return Encoder(f"{arch}:{path}", model, lambda x: to_model_input(_channels(x, 3), size, mean_i, std_i),
                   block_modules(model), reader="state_dict")


def _timm_model(name: str, arch_key: str) -> nn.Module:
    try:
        import timm
    except ImportError as err:
        raise SynthposError(f"{arch_key} {name}: timm is not installed (pip install timm for timm architectures)") from err
    try:
        return timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError as err:
        raise SynthposError(f"{arch_key} {name} is not a timm model (timm.list_models() names them)") from err


def _architecture(arch: str, arch_key: str = "--arch") -> nn.Module:
    """The model ``arch`` names, without its classifier: ``timm:<name>``, ``torchvision:<name>`` or a bare name."""
    import torchvision

    library, _, name = arch.rpartition(":")
    if library == "timm":
        return _timm_model(name, arch_key)
    if library not in ("", "torchvision"):
        raise SynthposError(f"{arch_key} {arch}: the library must be timm or torchvision (e.g. timm:resnet18)")
    try:
        model = torchvision.models.get_model(name, weights=None)
    except ValueError:
        if library == "torchvision":
            raise SynthposError(f"{arch_key} {arch} is not a torchvision model "
                                "(torchvision.models.list_models() names them)") from None
        try:
            return _timm_model(name, arch_key)
        except SynthposError:
            raise SynthposError(f"{arch_key} {arch} is neither a torchvision nor a timm model") from None
    for attr in ("fc", "head", "classifier"):  # drop the classifier: features, as every encoder here gives
        if isinstance(getattr(model, attr, None), nn.Module):
            setattr(model, attr, nn.Identity())
    return model


class _CLIPImage(nn.Module):
    def __init__(self, vision: nn.Module) -> None:
        super().__init__()
        self.vision = vision

    def forward(self, pixel_values: torch.Tensor):
        return self.vision(pixel_values=pixel_values)


def _clip_encoder(path: Path) -> Encoder:
    try:
        import transformers
    except ImportError as err:
        raise SynthposError(f"{path} looks like a transformers folder but transformers is not installed "
                            "(pip install transformers)") from err
    config = json.loads((path / "config.json").read_text())
    kind = (config.get("architectures") or [""])[0]
    try:
        if kind == "CLIPVisionModelWithProjection":
            vision = transformers.CLIPVisionModelWithProjection.from_pretrained(path, local_files_only=True)
            output = lambda out: out.image_embeds  # noqa: E731
        elif kind == "CLIPModel":
            vision = transformers.CLIPVisionModelWithProjection.from_pretrained(path, local_files_only=True)
            output = lambda out: out.image_embeds  # noqa: E731
        else:
            vision = transformers.CLIPVisionModel.from_pretrained(path, local_files_only=True)
            output = lambda out: out.pooler_output  # noqa: E731
    except (OSError, ValueError) as err:
        raise SynthposError(f"{path} cannot be loaded as a CLIP vision model: {str(err).splitlines()[0]}") from err
    size = vision.config.image_size
    mean, std = CLIP
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        cfg = json.loads(pre.read_text())
        mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
    model = _CLIPImage(vision)
    layers = [(f"encoder.{i}", layer) for i, layer in enumerate(vision.vision_model.encoder.layers)]
    return Encoder(f"clip:{path}", model, lambda x: to_model_input(_channels(x, 3), size, mean, std), layers,
                   output=output, layer_output=lambda out: out[0] if isinstance(out, tuple) else out, reader="clip")
