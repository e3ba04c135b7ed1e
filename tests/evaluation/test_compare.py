"""Encoders for CKA (synthpos backbones, TorchScript, torchvision state_dicts, CLIP folders) and `synthpos compare`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from typer.testing import CliRunner

from synthpos.cli import app
from synthpos.config import BackboneConfig, load_config, dump_config
from synthpos.data.augment import to_model_input
from synthpos.errors import SynthposError
from synthpos.evaluation.compare import compare_encoders
from synthpos.evaluation.encoders import IMAGENET, load_encoder
from synthpos.models.backbones import build_backbone, save_backbone

FMNIST = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = (0.3,), (0.35,)
IMAGES = np.random.default_rng(0).integers(0, 256, (24, 16, 16, 1), dtype=np.uint8)


def _backbone(tmp: Path, name: str, seed: int) -> Path:
    torch.manual_seed(seed)
    cfg = BackboneConfig(name="convnet", width=4)
    path = tmp / name / "pretrain" / "backbone.pt"
    save_backbone(build_backbone(cfg, 1), cfg, 1, path)
    return path


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def test_a_backbone_with_itself_is_one_everywhere_on_the_diagonal(tmp_path: Path) -> None:
    a = load_encoder(_backbone(tmp_path, "a", 0).parent.parent, 16, MEAN, STD)  # a run directory
    b = load_encoder(_backbone(tmp_path, "b", 1), 16, MEAN, STD)
    same = compare_encoders(a, a, IMAGES, batch_size=12)
    assert same["final"]["linear"] == pytest.approx(1.0, abs=1e-6)
    m = np.asarray(same["matrix"])
    assert m.shape == (5, 5) and np.allclose(np.diag(m), 1.0, atol=1e-6)  # 4 ReLUs + the output
    other = compare_encoders(a, b, IMAGES, batch_size=12)
    assert other["final"]["linear"] < 0.999


def test_torchscript_and_torchvision_state_dict_references(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_backbone(BackboneConfig(name="convnet", width=4), 1).eval()
    torch.jit.script(net).save(str(tmp_path / "ref.ts"))
    enc = load_encoder(tmp_path / "ref.ts", 16, MEAN, STD)
    (feats, _), = list(enc.batches(IMAGES, 64))
    with torch.no_grad():
        torch.testing.assert_close(feats, net(to_model_input(_nchw(IMAGES), 16, MEAN, STD)))

    resnet = torchvision.models.resnet18(num_classes=7).eval()
    torch.save(resnet.state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(SynthposError, match="--arch"):
        load_encoder(tmp_path / "resnet.pth", 32, MEAN, STD)
    enc = load_encoder(tmp_path / "resnet.pth", 32, MEAN, STD, arch="resnet18")
    (feats, layers), = list(enc.batches(IMAGES[:4], 64, with_layers=True))
    resnet.fc = torch.nn.Identity()
    with torch.no_grad():
        expected = resnet(to_model_input(_nchw(IMAGES[:4]).repeat(1, 3, 1, 1), 32, *IMAGENET))
    torch.testing.assert_close(feats, expected)
    assert len(layers) == 9  # stem + 8 basic blocks
    with pytest.raises(SynthposError, match="does not fit"):
        load_encoder(tmp_path / "resnet.pth", 32, MEAN, STD, arch="resnet34")


def test_clip_vision_folder_reference(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=16, patch_size=8, projection_dim=12)
    torch.manual_seed(0)
    model = transformers.CLIPVisionModelWithProjection(config).eval()
    model.save_pretrained(tmp_path / "clip")
    enc = load_encoder(tmp_path / "clip", 28, MEAN, STD)
    (feats, layers), = list(enc.batches(IMAGES[:6], 64, with_layers=True))
    assert feats.shape == (6, 12) and len(layers) == 2
    from synthpos.evaluation.encoders import CLIP
    with torch.no_grad():
        expected = model(pixel_values=to_model_input(_nchw(IMAGES[:6]).repeat(1, 3, 1, 1), 16, *CLIP)).image_embeds
    torch.testing.assert_close(feats, expected)
    a = load_encoder(_backbone(tmp_path, "a", 0), 16, MEAN, STD)
    result = compare_encoders(a, enc, IMAGES, batch_size=12)
    assert np.asarray(result["matrix"]).shape == (5, 3)


@pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed")
def test_compare_command_prints_cka_and_writes_the_heat_map(tmp_path: Path) -> None:
    for name, seed in (("a", 0), ("b", 1)):
        path = _backbone(tmp_path, name, seed)
        dump_config(load_config(None, [f"run_dir={tmp_path / name}", "pretrain.augment.crop_size=28"]),
                    path.parent / "config.yaml")
    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--images", "100",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "CKA of the final features (100 fashion_mnist test images): linear 0." in result.output
    saved = json.loads((out / "cka.json").read_text())
    assert f"linear {saved['final']['linear']:.4f}" in result.output
    assert (out / "cka_layers.png").stat().st_size > 2000


@pytest.mark.parametrize("text", ["data: [unclosed\n  - x: y:\n", "pretrain: 3\n"])
def test_compare_with_a_damaged_config_beside_the_backbone_is_one_line(tmp_path: Path, monkeypatch, capsys,
                                                                        text: str) -> None:
    """The resolved config.yaml beside a backbone cut short or overwritten: one line naming it, exit 2, nothing
    written (it says which data to compare on, so it is not skipped silently)."""
    import sys

    from synthpos.cli import main

    for name, seed in (("a", 0), ("b", 1)):
        (_backbone(tmp_path, name, seed).parent / "config.yaml").write_text(text)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    monkeypatch.setattr(sys, "argv", ["synthpos", "compare", str(tmp_path / "a"), str(tmp_path / "b")])
    with pytest.raises(SystemExit) as exit_:
        main()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and f"{tmp_path / 'a' / 'pretrain' / 'config.yaml'} is damaged" in lines[0]
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
