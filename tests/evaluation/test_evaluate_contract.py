"""Stage 4's contract: the feature cache, grey <-> RGB transfer, and the online kNN monitor's history.

Two scratch datasets registered here (as a user's plugin would, for this module only) hold tiny labelled images,
grey and RGB, whose class is a bright block in one quadrant; their content follows
``data.root``, so a changed data setting means other images. Backbones are ConvNets of width 4.
"""

from __future__ import annotations

import csv
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import synthpos.evaluation.evaluate as evaluate_module
from synthpos.config import BackboneConfig, PretrainConfig, load_config
from synthpos.data import ImageDataset
from synthpos.data.datasets import DatasetSource, register_dataset
from synthpos.evaluation.evaluate import evaluate_stage, match_channels
from synthpos.evaluation.features import extract_features
from synthpos.evaluation.knn import knn_accuracy
from synthpos.evaluation.monitor import KNNMonitor
from synthpos.models.backbones import build_backbone, load_backbone, save_backbone
from synthpos.registry import DATASETS

SIDE, CLASSES, TRAIN, TEST = 12, 4, 48, 24
CONVNET = BackboneConfig(name="convnet", width=4)


def toy_images(seed: int, n: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, SIDE, SIDE, channels): noise plus a block in quadrant ``label``, in a colour of the image's own."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % CLASSES
    images = rng.integers(0, 90, (n, SIDE, SIDE, channels))
    half = SIDE // 2
    for i, c in enumerate(labels):
        r, col = divmod(int(c), 2)
        images[i, r * half:(r + 1) * half, col * half:(col + 1) * half] += rng.integers(60, 166, channels)
    return images.astype(np.uint8), labels.astype(np.int64)


class _Toy(DatasetSource):
    channels = 1

    @classmethod
    def load(cls, config, split: str) -> ImageDataset:
        n = TRAIN if split == "train" else TEST
        images, labels = toy_images(zlib.crc32(f"{cls.channels}-{config.root}-{split}".encode()), n, cls.channels)
        mean = tuple(float(m) for m in images.mean(axis=(0, 1, 2)) / 255)
        std = tuple(float(s) for s in images.std(axis=(0, 1, 2)) / 255)
        return ImageDataset(cls.name, split, images, labels, [f"q{c}" for c in range(CLASSES)], mean, std)


class ToyGrey(_Toy):
    channels = 1


class ToyRGB(_Toy):
    channels = 3


@pytest.fixture(scope="module", autouse=True)
def _scratch_datasets_registered_for_this_module():
    """Registered only while this module runs, so no other test sees them among the known datasets."""
    register_dataset("toy_grey")(ToyGrey)
    register_dataset("toy_rgb")(ToyRGB)
    yield
    DATASETS.unregister("toy_grey")
    DATASETS.unregister("toy_rgb")


def _backbone(in_channels: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_backbone(CONVNET, in_channels).eval()


def _save(backbone: nn.Module, path: Path) -> Path:
    in_channels = next(m for m in backbone.modules() if isinstance(m, nn.Conv2d)).in_channels
    path.parent.mkdir(parents=True, exist_ok=True)
    save_backbone(backbone, CONVNET, in_channels, path)
    return path


def _config(run_dir: Path, checkpoint: Path, *extra: str):
    return load_config(None, [
        f"run_dir={run_dir}", "data.name=toy_grey", f"data.root={run_dir / 'data'}", f"evaluate.checkpoint={checkpoint}",
        "evaluate.knn_k=[3, 5]", "evaluate.linear_protocols=[fast]", "evaluate.linear.epochs=2",
        "evaluate.linear.lr_grid=null", "evaluate.linear.weight_decay_grid=null", "evaluate.label_fractions=[1.0]",
        "evaluate.feature_size=12", *extra,
    ])


@pytest.fixture
def extractions(monkeypatch) -> list[tuple[int, ...]]:
    """Every feature extraction stage 4 makes, as the shape of the images it encodes."""
    calls: list[tuple[int, ...]] = []

    def counted(backbone, images, *args, **kwargs):
        calls.append(images.shape)
        return extract_features(backbone, images, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "extract_features", counted)
    return calls


# --- the feature cache ---------------------------------------------------------------------------

def test_features_are_reused_only_for_the_same_backbone_bytes_and_data_settings(tmp_path: Path, extractions) -> None:
    checkpoint = _save(_backbone(1, 0), tmp_path / "backbone.pt")
    config = _config(tmp_path / "run", checkpoint)
    first = evaluate_stage(config, show_progress=False)
    assert [s[0] for s in extractions] == [TRAIN, TEST]  # computed once per split
    cache = sorted((config.evaluate_dir / "features").glob("*.pt"))
    assert len(cache) == 2

    extractions.clear()
    again = evaluate_stage(config, show_progress=False)
    assert extractions == []  # nothing changed: read from the cache
    assert again["results"] == first["results"]
    # Settings that do not change the features (a probe's, the kNN grid) reuse them too.
    evaluate_stage(_config(tmp_path / "run", checkpoint, "evaluate.knn_k=[3]", "evaluate.linear.epochs=3"),
                   show_progress=False)
    assert extractions == []

    # New bytes at the same path: other weights, so the cached features are not theirs.
    _save(_backbone(1, 1), checkpoint)
    retrained = evaluate_stage(config, show_progress=False)
    assert [s[0] for s in extractions] == [TRAIN, TEST]
    assert retrained["backbone_sha256"] != first["backbone_sha256"]
    fresh = sorted(set((config.evaluate_dir / "features").glob("*.pt")) - set(cache))
    assert len(fresh) == 2
    for old, new in zip(cache, fresh):
        assert not torch.equal(torch.load(old), torch.load(new))
    # ... and the new features are the new backbone's, as computed without any cache.
    data = load_config(None, ["data.name=toy_grey", f"data.root={tmp_path / 'run' / 'data'}"]).data
    test = ToyGrey.load(data, "test")
    expected = extract_features(load_backbone(checkpoint), test.images, 12, test.mean, test.std)
    assert any(torch.equal(torch.load(p), expected) for p in fresh)

    # Changed data settings: other images (root), another size (image_size), fewer training images (max_train).
    for extra, splits in ([f"data.root={tmp_path / 'other'}"], [TRAIN, TEST]), (["data.image_size=16"], [TRAIN, TEST]), \
                         (["evaluate.max_train=40"], [40]):
        extractions.clear()
        evaluate_stage(_config(tmp_path / "run", checkpoint, *extra), show_progress=False)
        assert [s[0] for s in extractions] == splits, extra
        if extra[0].startswith("data.image_size"):
            assert all(s[1:3] == (16, 16) for s in extractions)
    extractions.clear()
    evaluate_stage(config, show_progress=False)  # back to the first settings: all of it still cached
    assert extractions == []


def test_features_are_recomputed_when_the_images_change_under_the_same_settings(
        tmp_path: Path, extractions, monkeypatch) -> None:
    """A folder whose files were replaced: same config, name and count, other bytes."""
    checkpoint = _save(_backbone(1, 0), tmp_path / "backbone.pt")
    config = _config(tmp_path / "run", checkpoint)
    evaluate_stage(config, show_progress=False)
    assert [s[0] for s in extractions] == [TRAIN, TEST]

    original = ToyGrey.load.__func__

    def one_test_pixel_changed(cls, data, split):
        dataset = original(cls, data, split)
        if split == "test":
            dataset.images[0, 0, 0, 0] ^= 0xFF
        return dataset

    monkeypatch.setattr(ToyGrey, "load", classmethod(one_test_pixel_changed))
    extractions.clear()
    changed = evaluate_stage(config, show_progress=False)
    assert [s[0] for s in extractions] == [TEST]  # the train split's images are the same: still cached
    test = ToyGrey.load(config.data, "test")
    expected = extract_features(load_backbone(checkpoint), test.images, 12, test.mean, test.std)
    cached = [torch.load(p) for p in (config.evaluate_dir / "features").glob("toy_grey-test-*.pt")]
    assert len(cached) == 2 and any(torch.equal(c, expected) for c in cached)
    assert changed["results"]  # scored from the new features


# --- grey <-> RGB transfer -----------------------------------------------------------------------

def test_a_grey_backbone_evaluates_an_rgb_dataset_through_its_luma(tmp_path: Path) -> None:
    data = load_config(None, ["data.name=toy_rgb", f"data.root={tmp_path}"]).data
    rgb = ToyRGB.load(data, "test")
    grey = match_channels(rgb, 1)
    # PIL's ITU-R 601-2 luma (L = R 299/1000 + G 587/1000 + B 114/1000, in integers) as the reference.
    pil = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in rgb.images])[..., None]
    assert grey.images.shape == (TEST, SIDE, SIDE, 1) and grey.images.dtype == np.uint8
    difference = np.abs(grey.images.astype(int) - pil)
    assert difference.max() <= 1 and (difference == 0).mean() > 0.99  # rounding of x.5 aside, the same
    luma = np.array([0.299, 0.587, 0.114])
    assert grey.mean == pytest.approx((float(np.dot(rgb.mean, luma)),)) and len(grey.std) == 1
    assert (grey.labels == rgb.labels).all()

    # Through stage 4: the grey run's backbone on its own data and, as a transfer, on the RGB data.
    checkpoint = _save(_backbone(1, 0), tmp_path / "backbone.pt")
    config = _config(tmp_path / "run", checkpoint, f'evaluate.datasets=[{{name: toy_grey, root: "{tmp_path / "run" / "data"}"}}, '
                                                   f'{{name: toy_rgb, root: "{tmp_path}"}}]')
    metrics = evaluate_stage(config, show_progress=False)
    assert set(metrics["results"]) == {"toy_grey", "toy_rgb"}
    assert {r["dataset"]: r["transfer"] for r in metrics["records"]} == {"toy_grey": False, "toy_rgb": True}
    # The RGB test split's cached features are the grey backbone's features of the luma images.
    reference = extract_features(load_backbone(checkpoint), pil.astype(np.uint8), 12, grey.mean, grey.std)
    cached = [torch.load(p) for p in (config.evaluate_dir / "features").glob(f"toy_rgb-test-*.pt")]
    assert len(cached) == 1
    # Tolerance: PIL and synthpos round the luma of a few pixels to neighbouring grey levels (checked above).
    torch.testing.assert_close(cached[0], reference, rtol=0, atol=0.01 * reference.abs().max().item())
    assert metrics["results"]["toy_rgb"]["knn_top1"] > 1.5 / CLASSES  # the blocks stay visible in grey


def test_an_rgb_backbone_sees_a_grey_dataset_as_the_same_grey_in_each_channel(tmp_path: Path) -> None:
    data = load_config(None, ["data.name=toy_grey", f"data.root={tmp_path}"]).data
    grey = ToyGrey.load(data, "test")
    rgb = match_channels(grey, 3)
    assert rgb.images.shape == (TEST, SIDE, SIDE, 3)
    assert all((rgb.images[..., c] == grey.images[..., 0]).all() for c in range(3))
    assert rgb.mean == grey.mean * 3 and rgb.std == grey.std * 3
    # A first convolution over three equal channels equals one over the grey channel with the filters summed
    # over the input channels: a grey backbone built so must give the RGB backbone's features, to rounding.
    colour = _backbone(3, 0)
    summed = _backbone(1, 0)
    state = colour.state_dict()
    first = next(name for name, m in colour.named_modules() if isinstance(m, nn.Conv2d)) + ".weight"
    state[first] = state[first].sum(dim=1, keepdim=True)
    summed.load_state_dict(state)
    checkpoint = _save(colour, tmp_path / "backbone.pt")
    config = _config(tmp_path / "run", checkpoint, f'evaluate.datasets=[{{name: toy_grey, root: "{tmp_path}"}}]',
                     "data.name=toy_rgb")
    metrics = evaluate_stage(config, show_progress=False)
    assert {r["transfer"] for r in metrics["records"]} == {True}
    cached = [torch.load(p) for p in (config.evaluate_dir / "features").glob("toy_grey-test-*.pt")]
    assert len(cached) == 1
    reference = extract_features(summed, grey.images, 12, grey.mean, grey.std)
    torch.testing.assert_close(cached[0], reference, rtol=1e-4, atol=1e-5)


# --- the online kNN monitor ----------------------------------------------------------------------

class RecordingMonitor(KNNMonitor):
    """The monitor as built by pretraining, which also keeps a copy of the backbone at each check."""

    states: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        before = len(self.history)
        super().on_train_epoch_end(trainer, pl_module)
        if len(self.history) > before:
            RecordingMonitor.states.append({k: v.detach().clone() for k, v in pl_module.backbone.state_dict().items()})


def test_the_knn_monitor_records_each_check_as_an_offline_knn_of_that_backbone(tmp_path: Path, monkeypatch) -> None:
    from synthpos.methods.pretrain import pretrain

    monkeypatch.setattr("synthpos.methods.pretrain.KNNMonitor", RecordingMonitor)
    RecordingMonitor.states = []
    data = load_config(None, ["data.name=toy_grey", f"data.root={tmp_path}"]).data
    train, test = ToyGrey.load(data, "train"), ToyGrey.load(data, "test")
    cfg = PretrainConfig(method="simclr", backbone=CONVNET, projector_hidden_dim=16, projector_out_dim=8, batch_size=16,
                         epochs=3, knn_every_epochs=2, knn_subset=16, precision="fp32", accelerator="cpu",
                         channels_last=False, augment={"crop_size": SIDE}, optimizer={"warmup_epochs": 0, "lr": 0.5})
    out = tmp_path / "pretrain"
    path = pretrain(cfg, train, out, None, test, seed=0, show_progress=False)

    summary = json.loads((out / "summary.json").read_text())
    history = summary["knn_history"]
    assert [epoch for epoch, _ in history] == [2, 3]  # every 2 epochs, and the last one
    assert len(RecordingMonitor.states) == 2
    assert any(not torch.equal(a, b) for a, b in zip(*(s.values() for s in RecordingMonitor.states)))
    # Each entry is the weighted kNN (k 200, T 0.1) of that epoch's backbone, in eval mode: bank = the first
    # 10 x knn_subset training images (all 48 here), queries = the first knn_subset test images.
    bank, queries = train.take(min(len(train), 10 * cfg.knn_subset)), test.take(cfg.knn_subset)
    for (epoch, top1), state in zip(history, RecordingMonitor.states):
        backbone = build_backbone(CONVNET, 1)
        backbone.load_state_dict(state)
        features = [extract_features(backbone, d.images, SIDE, train.mean, train.std) for d in (bank, queries)]
        offline = knn_accuracy(features[0], torch.from_numpy(bank.labels), features[1], torch.from_numpy(queries.labels),
                               CLASSES, k=200, temperature=0.1)
        assert top1 == pytest.approx(offline, abs=1e-9), epoch
        assert 1.5 / CLASSES < top1 <= 1  # the quadrant blocks: far above chance for any of these encoders
    # The last check is the exported backbone.
    for name, value in load_backbone(path).state_dict().items():
        assert torch.equal(value, RecordingMonitor.states[-1][name]), name
    # One logged value per check, the same numbers (the CSV holds float32).
    with (out / "logs" / "version_0" / "metrics.csv").open() as fh:
        logged = [(int(r["epoch"]) + 1, float(r["knn/top1"])) for r in csv.DictReader(fh) if r.get("knn/top1")]
    assert [e for e, _ in logged] == [2, 3]
    assert [v for _, v in logged] == pytest.approx([v for _, v in history], abs=1e-6)
