"""`synthpos export`: every format round-trips to the backbone's features, loaded as the model card says.

The references are the libraries themselves (timm, torchvision, torch.jit, onnxruntime), built here
from the card's lines, never through synthpos.export's own helpers. Backbones are tiny (or ResNets at
16 px), their weights and BatchNorm statistics randomised so a misplaced key or buffer changes features.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file
from torch import nn

from synthpos.config import BackboneConfig, RunConfig, dump_config
from synthpos.errors import SynthposError
from synthpos.export import export
from synthpos.models.backbones import build_backbone, load_backbone, save_backbone

from test_cli import assert_bad_input, synthpos


def _randomised(cfg: BackboneConfig, channels: int) -> nn.Module:
    torch.manual_seed(1)
    net = build_backbone(cfg, channels)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            # BatchNorm only: its statistics and affine parameters are what a misplaced buffer would lose;
            # the convolutions are already random, and scaling them up would blow the features up.
            if name.endswith("running_var"):
                tensor.copy_(torch.rand_like(tensor) + 0.5)
            elif name.endswith(("running_mean", "bn1.bias", "bn2.bias", "bn3.bias")) or (tensor.dim() == 1 and tensor.is_floating_point()):
                tensor.add_(0.1 * torch.randn_like(tensor))
    return net


def _write_encoder(folder: Path, cfg: BackboneConfig, channels: int, crop: int = 16) -> Path:
    run = RunConfig()
    run.pretrain.backbone = cfg
    run.pretrain.augment.crop_size = crop
    path = folder / "backbone.pt"
    save_backbone(_randomised(cfg, channels), cfg, channels, path)
    dump_config(run, folder / "config.yaml")
    return path


def _features(model, channels: int, side: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(4, channels, side, side, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return x, model.eval()(x)


# Each library sees both stems and both depths (ResNet-50's bottleneck keys), split to keep the tests short.
@pytest.mark.parametrize("name,cifar_stem,channels", [("resnet18", False, 3), ("resnet50", True, 3)])
def test_torchvision_strict_load(tmp_path, name, cifar_stem, channels):
    backbone = _write_encoder(tmp_path / "pretrain", BackboneConfig(name=name, cifar_stem=cifar_stem), channels)
    export(backbone, "torchvision", tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "model.fc = nn.Identity()" in card and ("model.maxpool = nn.Identity()" in card) == cifar_stem

    model = getattr(torchvision.models, name)(weights=None)
    model.fc = nn.Identity()
    if cifar_stem:  # the card's two lines
        model.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    model.load_state_dict(load_file(str(tmp_path / "out" / "model.safetensors")), strict=True)
    x, want = _features(load_backbone(backbone), channels)
    assert torch.allclose(model.eval()(x), want, atol=1e-5)


@pytest.mark.parametrize("name,cifar_stem,channels", [("resnet18", True, 1), ("resnet50", False, 3)])
def test_timm_strict_load(tmp_path, name, cifar_stem, channels):
    timm = pytest.importorskip("timm")
    backbone = _write_encoder(tmp_path / "pretrain", BackboneConfig(name=name, cifar_stem=cifar_stem), channels)
    export(backbone, "timm", tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architecture"] == name and config["num_classes"] == 0
    assert config["pretrained_cfg"]["input_size"] == [channels, 16, 16]

    model = timm.create_model(name, pretrained=False, in_chans=channels, num_classes=0)
    if cifar_stem:
        model.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    model.load_state_dict(load_file(str(tmp_path / "out" / "model.safetensors")), strict=True)
    x, want = _features(load_backbone(backbone), channels)
    assert torch.allclose(model.eval()(x), want, atol=1e-5)


BACKBONES = [BackboneConfig(name="convnet", width=4), BackboneConfig(name="small_resnet", width=4),
             BackboneConfig(name="resnet18")]


@pytest.mark.parametrize("cfg", BACKBONES, ids=lambda c: c.name)
def test_torchscript_round_trip(tmp_path, cfg):
    backbone = _write_encoder(tmp_path / "pretrain", cfg, 1)
    export(backbone, "torchscript", tmp_path / "out")
    model = torch.jit.load(str(tmp_path / "out" / "model.pt"))
    x, want = _features(load_backbone(backbone), 1, side=20)  # another size than the export's 16
    assert torch.allclose(model(x), want, atol=1e-5)


@pytest.mark.parametrize("cfg", BACKBONES, ids=lambda c: c.name)
def test_onnx_round_trip(tmp_path, cfg):
    ort = pytest.importorskip("onnxruntime")
    backbone = _write_encoder(tmp_path / "pretrain", cfg, 3)
    export(backbone, "onnx", tmp_path / "out")
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(4))  # another batch size than the export's 3
    (got,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        want = load_backbone(backbone).eval()(x)
    assert torch.allclose(torch.from_numpy(got), want, atol=1e-4)


@pytest.mark.parametrize("fmt", ["timm", "torchvision"])
def test_small_backbones_refuse_library_formats(tmp_path, fmt):
    backbone = _write_encoder(tmp_path / "pretrain", BackboneConfig(name="convnet", width=4), 1)
    with pytest.raises(SynthposError, match="use --format torchscript or --format onnx"):
        export(backbone, fmt, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _quickstart_run(root: Path) -> Path:
    """A run directory laid out as the quick start's: results.json and one folder per encoder."""
    for folder in ("simclr", "clsp_simclr"):
        _write_encoder(root / folder, BackboneConfig(name="convnet", width=4), 1)
    rows = {"SimCLR": {"knn_top1": 0.71, "records": []}, "CLSP-SimCLR": {"knn_top1": 0.74, "records": []}}
    (root / "results.json").write_text(json.dumps({"rows": rows}))
    return root


def test_cli_run_directory(tmp_path):
    run = _quickstart_run(tmp_path / "run")
    result = synthpos(tmp_path, "export", str(run), "--format", "torchscript", "--out", str(tmp_path / "all"))
    assert result.returncode == 0, result.stderr
    for key, knn in (("simclr", "71.00%"), ("clsp_simclr", "74.00%")):
        card = (tmp_path / "all" / key / "README.md").read_text()
        assert knn in card and "synthpos_version" in card and "| data | fashion_mnist |" in card
        assert (tmp_path / "all" / key / "model.pt").is_file()
    result = synthpos(tmp_path, "export", str(run), "--encoder", "clsp_simclr", "--format", "onnx",
                      "--out", str(tmp_path / "one"))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["README.md", "backbone.json", "model.onnx"]


@pytest.mark.parametrize("args,needle", [
    (["--encoder", "byol", "--format", "onnx"], "no encoder 'byol'"),
    (["--format", "timm"], "needs a ResNet-18/50"),
])
def test_cli_bad_input(tmp_path, args, needle):
    run = _quickstart_run(tmp_path / "run")
    before = {p for p in tmp_path.rglob("*")}
    assert_bad_input(synthpos(tmp_path, "export", str(run), *args, "--out", str(tmp_path / "out")), needle)
    assert {p for p in tmp_path.rglob("*")} == before


def test_refuses_unknown_format_and_missing_backbone(tmp_path):
    run = _quickstart_run(tmp_path / "run")
    with pytest.raises(SynthposError, match="unknown format 'keras'"):
        export(run, "keras", tmp_path / "out")
    with pytest.raises(SynthposError, match="no backbone"):
        export(tmp_path / "nothing.pt", "onnx", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_refuses_full_out(tmp_path):
    run = _quickstart_run(tmp_path / "run")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert_bad_input(synthpos(tmp_path, "export", str(run), "--format", "onnx", "--out", str(tmp_path / "out")),
                     "not an empty folder")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
