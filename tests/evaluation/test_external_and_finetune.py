"""Stage 4 with a baseline encoder (evaluate.checkpoint: TorchScript, torchvision/timm state_dicts, a CLIP
folder) and the fine-tuning protocol (evaluate.finetune).

A scratch dataset registered for this module holds tiny grey images whose class is a bright block in one
quadrant (12 px, 4 classes, 48 train and 24 test images). Each number is checked against an independent
computation: the baseline's kNN against features made here with the library itself, the fine-tuning against a
plain training loop written here.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from synthpos.config import BackboneConfig, load_config
from synthpos.data import ImageDataset
from synthpos.data.augment import to_model_input
from synthpos.data.datasets import DatasetSource, register_dataset
from synthpos.evaluation.encoders import IMAGENET
from synthpos.evaluation.evaluate import evaluate_stage
from synthpos.evaluation.finetune import finetune
from synthpos.evaluation.knn import knn_accuracy
from synthpos.evaluation.seeds import aggregate
from synthpos.evaluation.splits import balanced_subset
from synthpos.models.backbones import build_backbone, save_backbone
from synthpos.registry import DATASETS

SIDE, CLASSES, TRAIN, TEST = 12, 4, 48, 24
CONVNET = BackboneConfig(name="convnet", width=4)


def toy_images(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, SIDE, SIDE, 1): noise plus a bright block in quadrant ``label``."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % CLASSES
    images = rng.integers(0, 90, (n, SIDE, SIDE, 1))
    half = SIDE // 2
    for i, c in enumerate(labels):
        r, col = divmod(int(c), 2)
        images[i, r * half:(r + 1) * half, col * half:(col + 1) * half] += rng.integers(60, 166)
    return images.astype(np.uint8), labels.astype(np.int64)


class ToyQuadrants(DatasetSource):
    @classmethod
    def load(cls, split, root, settings=None, *, test_root=None, image_size=None) -> ImageDataset:
        images, labels = toy_images(zlib.crc32(f"{root}-{split}".encode()), TRAIN if split == "train" else TEST)
        mean, std = (float(images.mean() / 255),), (float(images.std() / 255),)
        return ImageDataset(cls.name, split, images, labels, [f"q{c}" for c in range(CLASSES)], mean, std)


@pytest.fixture(scope="module", autouse=True)
def _scratch_dataset_registered_for_this_module():
    register_dataset("toy_quadrants")(ToyQuadrants)
    yield
    DATASETS.unregister("toy_quadrants")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions: one thread is several times faster than two on a busy machine, and never slower here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(run_dir: Path, *extra: str):
    return load_config(None, [
        f"run_dir={run_dir}", "data.name=toy_quadrants", f"data.root={run_dir.parent / 'data'}", "evaluate.knn_k=[3, 5]",
        "evaluate.linear_protocols=[fast]", "evaluate.linear.epochs=2", "evaluate.linear.lr_grid=null",
        "evaluate.linear.weight_decay_grid=null", "evaluate.label_fractions=[0.5, 1.0]", "evaluate.feature_size=12",
        *extra,
    ])


def _own_backbone(run_dir: Path) -> Path:
    torch.manual_seed(0)
    path = run_dir / "pretrain" / "backbone.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_backbone(build_backbone(CONVNET, 1).eval(), CONVNET, 1, path)
    return path


def _resnet18() -> nn.Module:
    torch.manual_seed(1)
    return torchvision.models.resnet18(num_classes=7).eval()  # a classifier the reader must drop


def _knn_of(features_train, features_test, data, k: int) -> float:
    return knn_accuracy(features_train, torch.from_numpy(data["train"].labels), features_test,
                        torch.from_numpy(data["test"].labels), CLASSES, k, 0.07)


def _splits(config) -> dict[str, ImageDataset]:
    return {s: ToyQuadrants.from_config(config.data, s) for s in ("train", "test")}


# --- baselines ---------------------------------------------------------------------------------------------------


def test_state_dicts_of_torchvision_and_timm_and_a_torchscript_file_are_evaluated_as_baselines(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _own_backbone(run)
    resnet = _resnet18()
    torch.save(resnet.state_dict(), tmp_path / "tv.pt")
    torch.save({f"module.{k}": v for k, v in resnet.state_dict().items()}, tmp_path / "timm.pt")  # DDP-prefixed
    trunk = copy.deepcopy(resnet)
    trunk.fc = nn.Identity()
    torch.jit.save(torch.jit.script(trunk), tmp_path / "scripted.pt")

    tv = evaluate_stage(_config(run, f"evaluate.checkpoint={tmp_path / 'tv.pt'}", "evaluate.arch=torchvision:resnet18"))
    own = tv["results"]["toy_quadrants"]
    assert own["knn_top1"] > 0 and tv["backbone"] == str(run / "pretrain" / "backbone.pt")  # the run's own, beside
    (name, base), = tv["baselines"].items()
    assert name == "torchvision:resnet18:tv.pt" and base["reader"] == "state_dict"
    assert {r["protocol"] for r in base["records"]} == {"knn", "linear-fast"}
    assert {r["label_fraction"] for r in base["records"]} == {0.5, 1.0}
    assert all(r["encoder"] == name for r in base["records"]) and not any("encoder" in r for r in tv["records"])

    # Independent features: torchvision's model, grey repeated to RGB, ImageNet normalisation.
    config = _config(run)
    data = _splits(config)
    with torch.no_grad():
        feats = {s: trunk(to_model_input(torch.from_numpy(d.images).permute(0, 3, 1, 2).repeat(1, 3, 1, 1), 12,
                                         *IMAGENET)) for s, d in data.items()}
    knn = next(r for r in base["records"] if r["protocol"] == "knn")
    assert knn["value"] == pytest.approx(_knn_of(feats["train"], feats["test"], data, knn["hyper_parameters"]["k"]))

    # timm's resnet18 has torchvision's parameter names: the same weights give the same numbers.
    run_timm = tmp_path / "run_timm"
    _own_backbone(run_timm)
    tm = evaluate_stage(_config(run_timm, f"evaluate.checkpoint={tmp_path / 'timm.pt'}", "evaluate.arch=timm:resnet18"))
    (tname, tbase), = tm["baselines"].items()
    assert tname == "timm:resnet18:timm.pt"
    assert [r["value"] for r in tbase["records"]] == pytest.approx([r["value"] for r in base["records"]], abs=1e-6)

    # TorchScript: the data's own normalisation, grey in one channel repeated by the reader.
    run_ts = tmp_path / "run_ts"
    _own_backbone(run_ts)
    ts = evaluate_stage(_config(run_ts, f"evaluate.checkpoint={tmp_path / 'scripted.pt'}"))
    (sname, sbase), = ts["baselines"].items()
    assert sname == "torchscript:scripted.pt" and sbase["reader"] == "torchscript"
    mean, std = data["train"].mean, data["train"].std
    with torch.no_grad():
        feats = {s: trunk(to_model_input(torch.from_numpy(d.images).permute(0, 3, 1, 2), 12, mean, std).repeat(1, 3, 1, 1))
                 for s, d in data.items()}
    knn = next(r for r in sbase["records"] if r["protocol"] == "knn")
    assert knn["value"] == pytest.approx(_knn_of(feats["train"], feats["test"], data, knn["hyper_parameters"]["k"]))


def _cli(capsys, *args: str) -> tuple[int, str]:
    from synthpos.cli import main

    capsys.readouterr()
    argv, sys.argv = sys.argv, ["synthpos", *args]
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = argv
    return code, capsys.readouterr().err


def _tree(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*"))}


def test_a_file_no_reader_accepts_is_one_line_exit_2_and_the_run_directory_is_unchanged(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    _own_backbone(run)
    sets = [x for s in ("run_dir=" + str(run), "data.name=toy_quadrants", f"data.root={tmp_path / 'data'}",
                        "evaluate.knn_k=[3,5]", "evaluate.linear_protocols=[fast]", "evaluate.linear.epochs=1",
                        "evaluate.linear.lr_grid=null", "evaluate.linear.weight_decay_grid=null",
                        "evaluate.label_fractions=[1.0]", "evaluate.feature_size=12") for x in ("--set", s)]
    code, err = _cli(capsys, "evaluate", "-q", *sets)
    assert code == 0 and (run / "evaluate" / "metrics.json").is_file(), err
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a model\xff" * 50)
    torch.save(_resnet18().state_dict(), tmp_path / "tv.pt")
    cases = {
        "garbage": (["--set", f"evaluate.checkpoint={tmp_path / 'garbage.pt'}"], "cannot be read as TorchScript"),
        "no-arch": (["--set", f"evaluate.checkpoint={tmp_path / 'tv.pt'}"], "evaluate.arch"),
        "wrong-arch": (["--set", f"evaluate.checkpoint={tmp_path / 'tv.pt'}", "--set", "evaluate.arch=timm:resnet50"],
                       "does not fit timm:resnet50"),
        "no-such-arch": (["--set", f"evaluate.checkpoint={tmp_path / 'tv.pt'}", "--set",
                          "evaluate.arch=torchvision:nonet"], "not a torchvision model"),
    }
    before = _tree(tmp_path)
    for name, (extra, needle) in cases.items():
        code, err = _cli(capsys, "evaluate", "-q", *sets, *extra)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: evaluate.checkpoint="), (name, err)
        assert needle in lines[0], (name, lines[0])
        assert _tree(tmp_path) == before, name  # nothing moved aside, written or removed


# --- fine-tuning -------------------------------------------------------------------------------------------------


def test_the_class_balanced_subsets_hold_exactly_their_share_of_every_class() -> None:
    labels = np.repeat(np.arange(5), [1000, 300, 57, 10, 1])
    np.random.default_rng(0).shuffle(labels)
    for fraction in (0.01, 0.1):
        idx = balanced_subset(labels, fraction, seed=3)
        counts = np.bincount(labels[idx], minlength=5)
        expected = [max(1, round(fraction * n)) for n in (1000, 300, 57, 10, 1)]
        assert counts.tolist() == expected and len(set(idx.tolist())) == len(idx)
    assert set(balanced_subset(labels, 0.01, 3)) <= set(balanced_subset(labels, 0.1, 3))  # they nest


def _reference_finetune(backbone, images, labels, test_images, test_labels, size, mean, std, lr, epochs, batch, seed):
    """A plain loop: SGD (Nesterov 0.9), cosine per step, zero head, the same seeded order; no flips."""
    model = copy.deepcopy(backbone).train()
    with torch.no_grad():
        dim = model.eval()(to_model_input(torch.from_numpy(images[:2]).permute(0, 3, 1, 2), size, mean, std)).shape[1]
    model.train()
    head = nn.Linear(dim, CLASSES)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=lr, momentum=0.9, nesterov=True)
    gen = torch.Generator().manual_seed(seed)
    n, steps = len(images), epochs * math.ceil(len(images) / batch)
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        torch.rand(n, generator=gen)  # the flips' draw (unused here)
        for start in range(0, n, batch):
            opt.param_groups[0]["lr"] = lr * (1 + math.cos(math.pi * step / steps)) / 2
            step += 1
            idx = order[start:start + batch].numpy()
            x = to_model_input(torch.from_numpy(images[idx]).permute(0, 3, 1, 2), size, mean, std)
            loss = F.cross_entropy(head(model(x)), torch.from_numpy(labels[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        x = to_model_input(torch.from_numpy(test_images).permute(0, 3, 1, 2), size, mean, std)
        return (head(model(x)).argmax(1).numpy() == test_labels).mean(), model


def test_finetuning_trains_the_whole_backbone_as_a_plain_loop_does(tmp_path: Path) -> None:
    data = _splits(_config(tmp_path))
    tr, te = data["train"], data["test"]
    torch.manual_seed(0)
    backbone = build_backbone(CONVNET, 1)
    before = copy.deepcopy(backbone.state_dict())
    ours = finetune(backbone, tr.images, tr.labels, te.images, te.labels, CLASSES, 12, tr.mean, tr.std,
                    lr=0.05, epochs=3, batch_size=16, seed=5, flip=False, device="cpu")
    top1, reference = _reference_finetune(backbone, tr.images, tr.labels, te.images, te.labels, 12, tr.mean, tr.std,
                                          0.05, 3, 16, 5)
    assert ours["top1"] == pytest.approx(top1)
    for (k, a), (_, b) in zip(ours["model"].state_dict().items(), reference.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    moved = [k for k, v in ours["model"].state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    conv_weights = [k for k in before if k.endswith("weight") and before[k].dim() == 4]
    assert set(conv_weights) <= set(moved)  # every conv layer trained, not a frozen probe
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())  # the given backbone untouched


def test_the_finetune_protocol_is_chosen_on_validation_recorded_and_aggregated_over_seeds(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _own_backbone(run)
    metrics = evaluate_stage(_config(run, "evaluate.finetune={fractions: [0.25, 0.5], epochs: [1, 2], "
                                          "lr_grid: [0.01], batch_size: 8}"))
    summary = metrics["results"]["toy_quadrants"]
    assert {"finetune_top1@0.25", "finetune_top1@0.5", "linear_top1@0.5"} <= set(summary)
    records = {r["label_fraction"]: r for r in metrics["records"] if r["protocol"] == "finetune"}
    labels = ToyQuadrants.from_config(_config(run).data, "train").labels
    for fraction, record in records.items():
        assert record["train_labels"] == sum(max(1, round(fraction * n)) for n in np.bincount(labels))
        assert record["name"] == f"finetune@{fraction:g}/test/seed=0" and record["scored_on"] == "test"
        assert record["selection"]["split"] == "validation"
        assert list(record["selection"]["validation_top1"]) == ["optimizer=sgd,epochs=1,lr=0.01",
                                                               "optimizer=sgd,epochs=2,lr=0.01"]
        assert record["hyper_parameters"]["epochs"] in (1, 2)
        assert summary[f"finetune_top1@{fraction:g}"] == record["value"]
    linear = next(r for r in metrics["records"] if r["protocol"] == "linear-fast" and r["label_fraction"] == 0.5)
    assert linear["train_labels"] == records[0.5]["train_labels"]  # the same labelled images as the probe at 50%
    seeds = aggregate({0: metrics, 1: metrics}, "test")
    assert "toy_quadrants/finetune_top1@0.25" in seeds["summary"]


def test_the_report_shows_baseline_and_finetune_rows(tmp_path: Path) -> None:
    from synthpos.report.html import write_report

    run = tmp_path / "run"
    _own_backbone(run)
    torch.jit.save(torch.jit.script(build_backbone(CONVNET, 1).eval()), tmp_path / "scripted.pt")
    evaluate_stage(_config(run, f"evaluate.checkpoint={tmp_path / 'scripted.pt'}",
                           "evaluate.finetune={fractions: [0.5], epochs: [1], lr_grid: [0.01], batch_size: 8}"))
    html = write_report([run], cka_images=16).read_text()
    assert "baseline torchscript:scripted.pt" in html
    assert "fine-tune top-1, 50% labels" in html
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    assert f"{100 * metrics['results']['toy_quadrants']['finetune_top1@0.5']:.2f}" in html


def test_a_clip_folder_is_evaluated_as_a_baseline_with_its_own_normalisation(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from synthpos.evaluation.encoders import CLIP

    config = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=16, patch_size=8, projection_dim=12)
    torch.manual_seed(0)
    model = transformers.CLIPVisionModelWithProjection(config).eval()
    model.save_pretrained(tmp_path / "clip")
    run = tmp_path / "run"  # no pretraining: the baseline alone
    metrics = evaluate_stage(_config(run, f"evaluate.checkpoint={tmp_path / 'clip'}"))
    assert metrics["results"] == {} and metrics["backbone"] is None
    (name, base), = metrics["baselines"].items()
    assert name == "clip:clip" and base["reader"] == "clip"
    data = _splits(_config(run))
    with torch.no_grad():
        feats = {s: model(pixel_values=to_model_input(torch.from_numpy(d.images).permute(0, 3, 1, 2).repeat(1, 3, 1, 1),
                                                      16, *CLIP)).image_embeds for s, d in data.items()}
    knn = next(r for r in base["records"] if r["protocol"] == "knn")
    assert knn["value"] == pytest.approx(_knn_of(feats["train"], feats["test"], data, knn["hyper_parameters"]["k"]))


FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed")
def test_finetuning_beats_the_frozen_linear_probe_on_the_same_ten_percent_of_fashion_mnist() -> None:
    """Even from a random ConvNet: 50 labelled images per class are enough to train the features themselves."""
    from synthpos.config import DataConfig
    from synthpos.data import load_dataset
    from synthpos.evaluation.features import extract_features
    from synthpos.evaluation.linear_probe import linear_probe

    train = load_dataset(DataConfig(name="fashion_mnist"), "train").take(1000)
    test = load_dataset(DataConfig(name="fashion_mnist"), "test").take(1000)
    idx = balanced_subset(train.labels, 0.1, seed=0)
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(name="convnet", width=8), 1).eval()
    tuned = finetune(backbone, train.images[idx], train.labels[idx], test.images, test.labels, 10, 28, train.mean,
                     train.std, lr=0.1, epochs=30, batch_size=32, seed=0, device="cpu")
    feats = {n: extract_features(backbone, d.images, 28, train.mean, train.std) for n, d in (("tr", train), ("te", test))}
    probe = linear_probe(feats["tr"][idx], torch.from_numpy(train.labels[idx]), feats["te"], torch.from_numpy(test.labels),
                         10, epochs=100, lr=1.0, seed=0)
    assert tuned["top1"] > probe["top1"] + 0.05, (tuned["top1"], probe["top1"])
