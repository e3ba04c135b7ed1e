"""Store diagnostics: distances against plain numpy loops, fidelity against a direct
computation, the cached classifier, and `synthpos inspect-store` end to end."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from synthpos.config import DataConfig, FidelityConfig, load_config
from synthpos.data import ImageDataset, load_dataset
from synthpos.data.synthetic_store import SyntheticStore, dataset_fingerprint
from synthpos.errors import SynthposError
from synthpos.evaluation.fidelity import Classifier, predict, store_fidelity
from synthpos.evaluation.store_diagnostics import (
    feature_distances,
    fidelity_classifier,
    inspect_store,
    inspect_store_stage,
    pixel_distances,
)

SCRIPT = Path(sys.executable).with_name("synthpos")
FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed")


# ----------------------------------------------------------------------------- references


def _rms(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((x.astype(np.float64) / 255 - y.astype(np.float64) / 255) ** 2)))


def _cosine_distance(x: np.ndarray, y: np.ndarray) -> float:
    return float(1 - np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)))


def _loop_means(anchors, candidates, distance):
    """Mean over anchors of (mean over pairs i<j of d(c_i, c_j)) and of (mean over i of d(c_i, anchor))."""
    between, to_anchor = [], []
    for anchor, cands in zip(anchors, candidates):
        between.append(np.mean([distance(cands[i], cands[j]) for i, j in itertools.combinations(range(len(cands)), 2)]))
        to_anchor.append(np.mean([distance(c, anchor) for c in cands]))
    return float(np.mean(between)), float(np.mean(to_anchor))


def _make_store(path: Path, images: np.ndarray, candidates: np.ndarray, shard_size: int, name: str = "toy") -> SyntheticStore:
    store = SyntheticStore.create(path, dataset_fingerprint(name, "train", images), candidates=candidates.shape[1],
                                  shard_size=shard_size, generator={"kind": "hand-made"})
    for s in range(store.layout.num_shards):
        start, end = store.layout.shard_range(s)
        store.write_shard(s, candidates[start:end])
    return store


def _dataset(images: np.ndarray, labels: np.ndarray | None, classes: int = 3) -> ImageDataset:
    channels = images.shape[-1]
    return ImageDataset("toy", "train", images, labels, [f"c{i}" for i in range(classes)] if labels is not None else [],
                        (0.5,) * channels, (0.25,) * channels)


@pytest.fixture
def hand_made(tmp_path):
    """7 anchors, K = 3, RGB 6x6, in shards of 3: candidates are the anchor plus noise of growing size."""
    rng = np.random.default_rng(0)
    anchors = rng.integers(0, 256, size=(7, 6, 6, 3), dtype=np.uint8)
    noise = rng.normal(size=(7, 3, 6, 6, 3)) * np.array([5.0, 30.0, 90.0])[None, :, None, None, None]
    candidates = np.clip(anchors[:, None].astype(np.float64) + noise, 0, 255).round().astype(np.uint8)
    store = _make_store(tmp_path / "store", anchors, candidates, shard_size=3)
    return anchors, candidates, store


# ----------------------------------------------------------------------------- distances


def test_pixel_distances_match_a_numpy_loop(hand_made) -> None:
    anchors, candidates, _ = hand_made
    between, to_anchor = pixel_distances(anchors, candidates)
    for a in range(len(anchors)):
        ref_between, ref_to_anchor = _loop_means(anchors[a: a + 1], candidates[a: a + 1], _rms)
        assert between[a] == pytest.approx(ref_between, rel=1e-12)
        assert to_anchor[a] == pytest.approx(ref_to_anchor, rel=1e-12)
    # Identical images are at distance 0, black against white at 1.
    black, white = np.zeros((1, 2, 2, 1), np.uint8), np.full((1, 1, 2, 2, 1), 255, np.uint8)
    assert pixel_distances(black, np.concatenate([white, white], axis=1)) == (pytest.approx([0.0]), pytest.approx([1.0]))
    single_between, single_to_anchor = pixel_distances(anchors, candidates[:, :1])
    assert np.isnan(single_between).all()
    assert single_to_anchor == pytest.approx([_rms(c, a) for a, c in zip(anchors, candidates[:, 0])])


def test_feature_distances_match_a_numpy_loop() -> None:
    rng = np.random.default_rng(1)
    anchors, candidates = rng.normal(size=(5, 16)), rng.normal(size=(5, 4, 16))
    between, to_anchor = feature_distances(torch.from_numpy(anchors), torch.from_numpy(candidates))
    for a in range(5):
        ref = _loop_means(anchors[a: a + 1], candidates[a: a + 1], _cosine_distance)
        assert (between[a], to_anchor[a]) == pytest.approx(ref, rel=1e-10)
    # Scaling a feature vector does not move it (L2-normalised), its negation is at distance 2.
    same = torch.from_numpy(np.stack([anchors[:, None] * 3.0, -anchors[:, None]], axis=1)[:, :, 0])
    between, to_anchor = feature_distances(torch.from_numpy(anchors), same)
    assert between == pytest.approx([2.0] * 5) and to_anchor == pytest.approx([1.0] * 5)


# ----------------------------------------------------------------------------- one pass over a store


def test_inspect_store_diversity_on_a_hand_made_store(hand_made) -> None:
    anchors, candidates, store = hand_made
    weights = np.random.default_rng(2).normal(size=(6 * 6 * 3, 5))

    def encoder(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(images.reshape(len(images), -1).astype(np.float64) @ weights)

    dataset = _dataset(anchors, labels=None)
    # batch_anchors=2 crosses the shard boundaries (shards of 3) on purpose.
    report = inspect_store(store, dataset, encoder=encoder, batch_anchors=2)
    assert report["anchors"] == 7 and report["candidates"] == 3 and report["fidelity"] is None
    pixel, features = report["diversity"]["pixel"], report["diversity"]["features"]
    assert (pixel["between_candidates"], pixel["candidate_to_anchor"]) == pytest.approx(_loop_means(anchors, candidates, _rms))
    embedded = lambda x: x.reshape(-1).astype(np.float64) @ weights  # noqa: E731
    ref = _loop_means(anchors, candidates, lambda x, y: _cosine_distance(embedded(x), embedded(y)))
    assert (features["between_candidates"], features["candidate_to_anchor"]) == pytest.approx(ref)
    nxt = np.roll(anchors, -1, axis=0)
    assert pixel["between_real_images"] == pytest.approx(np.mean([_rms(a, b) for a, b in zip(anchors, nxt)]))
    assert features["between_real_images"] == pytest.approx(
        np.mean([_cosine_distance(embedded(a), embedded(b)) for a, b in zip(anchors, nxt)]))
    # Noise grows with the candidate index, so candidates are nearer their anchor than random images are.
    assert pixel["candidate_to_anchor"] < pixel["between_real_images"]

    first = inspect_store(store, dataset, max_anchors=4)
    assert first["anchors"] == 4 and first["diversity"]["features"] is None
    assert first["diversity"]["pixel"]["between_candidates"] == pytest.approx(_loop_means(anchors[:4], candidates[:4], _rms)[0])


def test_fidelity_and_classifier_features_match_a_direct_computation(tmp_path) -> None:
    torch.manual_seed(0)
    model = Classifier(in_channels=1, num_classes=3, width=4, size=8).eval()
    rng = np.random.default_rng(3)
    anchors = rng.integers(0, 256, size=(9, 8, 8, 1), dtype=np.uint8)
    candidates = rng.integers(0, 256, size=(9, 4, 8, 8, 1), dtype=np.uint8)
    store = _make_store(tmp_path / "store", anchors, candidates, shard_size=4)
    dataset = _dataset(anchors, labels=None)
    # Labels the classifier gives some candidates: fidelity strictly between 0 and 1.
    labels = predict(model, candidates[:, 0], dataset.mean, dataset.std).astype(np.int64)
    labels[::3] = (labels[::3] + 1) % 3
    dataset = _dataset(anchors, labels)

    report = inspect_store(store, dataset, classifier=model, batch_anchors=4)
    agree = np.stack([predict(model, candidates[a], dataset.mean, dataset.std) == labels[a] for a in range(9)])
    assert 0 < agree.mean() < 1
    assert report["fidelity"]["fidelity"] == pytest.approx(agree.mean())
    assert report["fidelity"]["all_candidates_agree"] == pytest.approx(agree.all(axis=1).mean())
    assert report["fidelity"]["anchors_classified_right"] == pytest.approx(
        (predict(model, anchors, dataset.mean, dataset.std) == labels).mean())
    # The same numbers as fidelity.store_fidelity (the quick start's implementation).
    other = store_fidelity(model, store, labels, dataset.mean, dataset.std)
    assert report["fidelity"]["fidelity"] == pytest.approx(other["fidelity"])
    assert report["fidelity"]["all_candidates_agree"] == pytest.approx(other["all_candidates_agree"])

    # Without an encoder, the feature space is the classifier's penultimate layer.
    def penultimate(images: np.ndarray) -> np.ndarray:
        x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
        with torch.no_grad():
            return model.head[1](model.head[0](model.features(x))).double().numpy()

    ref = _loop_means(penultimate(anchors), penultimate(candidates.reshape(-1, 8, 8, 1)).reshape(9, 4, -1),
                      _cosine_distance)
    features = report["diversity"]["features"]
    assert (features["between_candidates"], features["candidate_to_anchor"]) == pytest.approx(ref, rel=1e-5)


def test_unlabelled_image_folder_skips_fidelity_but_not_diversity(tmp_path) -> None:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    config = load_config(None, [f"run_dir={tmp_path / 'run'}", "data.name=image_folder", f"data.root={folder}"])
    dataset = load_dataset(config.data, "train")
    assert dataset.labels is None
    candidates = np.repeat(dataset.images[:, None], 2, axis=1)
    candidates[:, 1] = 255 - candidates[:, 1]
    _make_store(config.store_dir, dataset.images, candidates, shard_size=4, name=dataset.name)

    report = inspect_store_stage(config, show_progress=False)
    assert report["fidelity"] is None and report["diversity"]["features"] is None
    assert any("fidelity skipped" in note for note in report["notes"])
    assert any("--encoder" in note for note in report["notes"])
    assert report["diversity"]["pixel"]["candidate_to_anchor"] == pytest.approx(
        _loop_means(dataset.images, candidates, _rms)[1])
    written = json.loads((config.store_dir / "inspect" / "inspect.json").read_text())
    assert written == json.loads(json.dumps(report))
    assert (config.store_dir / "inspect" / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (config.store_dir / "inspect").iterdir() if ".tmp" in p.name]
    # no labels, no judge: FID needs the Inception weights, said before anything is written
    with pytest.raises(SynthposError, match="--fid-weights"):
        inspect_store_stage(config, show_progress=False, fid=True, out_dir=tmp_path / "fid")
    assert not (tmp_path / "fid").exists()


# ----------------------------------------------------------------------------- the cached classifier


@pytest.mark.slow
@needs_fmnist
def test_fidelity_classifier_is_trained_once_and_keyed_by_its_settings(tmp_path) -> None:
    data, cfg = DataConfig(name="fashion_mnist", root=FMNIST), FidelityConfig(train_images=256, epochs=1, batch_size=64, width=4)
    model, info = fidelity_classifier(data, cfg, seed=0, cache_dir=tmp_path, show_progress=False)
    assert not info["cached"] and info["train_images"] == 256 and 0 <= info["test_top1"] <= 1
    stat = Path(info["path"]).stat()
    again, info2 = fidelity_classifier(data.model_copy(update={"subset": 100}), cfg, 0, tmp_path, show_progress=False)
    assert info2["cached"] and info2["path"] == info["path"], "data.subset does not change the classifier"
    assert info2["test_top1"] == info["test_top1"]
    assert (Path(info["path"]).stat().st_mtime_ns, Path(info["path"]).stat().st_ino) == (stat.st_mtime_ns, stat.st_ino)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    _, other = fidelity_classifier(data, cfg.model_copy(update={"epochs": 2}), 0, tmp_path, show_progress=False)
    _, seeded = fidelity_classifier(data, cfg, 1, tmp_path, show_progress=False)
    assert len({info["path"], other["path"], seeded["path"]}) == 3 and not other["cached"] and not seeded["cached"]


# ----------------------------------------------------------------------------- the command


def _synthpos(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="120")
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _main(monkeypatch, capsys, cwd: Path, *args: str) -> tuple[int, str]:
    """``synthpos ARGS`` in this process (the console script's ``main``): (exit code, stderr)."""
    from synthpos.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # main() sets it; restored after the test
    monkeypatch.setattr(sys, "argv", ["synthpos", *args])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def _one_error_line(code: int, err: str, needle: str) -> None:
    assert code == 2, (code, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def fmnist_run(tmp_path_factory) -> Path:
    """A run config and a store of 40 real Fashion-MNIST anchors with perturbed copies as candidates."""
    run = tmp_path_factory.mktemp("inspect")
    config = {"run_dir": str(run / "run"), "data": {"name": "fashion_mnist", "root": str(FMNIST), "subset": 40},
              "generate": {"shard_size": 16, "candidates": 3},
              "fidelity": {"train_images": 512, "epochs": 1, "batch_size": 64, "width": 8}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    anchors = load_dataset(load_config(run / "config.yaml").data, "train").images
    rng = np.random.default_rng(5)
    shifted = np.roll(anchors, 2, axis=2)  # a small translation
    noisy = np.clip(anchors + rng.normal(0, 20, anchors.shape), 0, 255).astype(np.uint8)
    candidates = np.stack([anchors, shifted, noisy], axis=1)
    _make_store(run / "run" / "store", anchors, candidates, shard_size=16, name="fashion_mnist")
    return run


@pytest.mark.slow
@needs_fmnist
def test_inspect_store_command_end_to_end(fmnist_run) -> None:
    run = fmnist_run
    result = _synthpos(run, "inspect-store", "-q", "--config", "config.yaml")
    assert result.returncode == 0, result.stderr
    assert "between candidates" in result.stdout and "candidates with their anchor's label" in result.stdout
    out = run / "run" / "store" / "inspect"
    report = json.loads((out / "inspect.json").read_text())
    assert report["anchors"] == 40 and report["candidates"] == 3 and report["dataset"] == "fashion_mnist/train"
    assert 0 <= report["fidelity"]["fidelity"] <= 1 and not report["fidelity"]["classifier"]["cached"]
    assert report["diversity"]["features"]["encoder"].startswith("the fidelity classifier")
    store = SyntheticStore.open(run / "run" / "store")
    anchors = load_dataset(load_config(run / "config.yaml").data, "train").images
    cands = np.stack([store[a] for a in range(40)])
    assert report["diversity"]["pixel"]["between_candidates"] == pytest.approx(_loop_means(anchors, cands, _rms)[0])
    assert (out / "grid.png").read_bytes()[:4] == b"\x89PNG"



@pytest.mark.slow
@needs_fmnist
def test_second_inspection_reads_the_cached_classifier(fmnist_run, monkeypatch, capsys) -> None:
    """In-process through main(): --max-anchors and --out are honoured, the classifier is trained once."""
    run = fmnist_run
    code, err = _main(monkeypatch, capsys, run, "inspect-store", "-q", "--config", "config.yaml", "--max-anchors", "10",
                      "--out", "first")
    assert code == 0, err
    first = json.loads((run / "first" / "inspect.json").read_text())
    assert first["anchors"] == 10 and first["store_anchors"] == 40
    code, err = _main(monkeypatch, capsys, run, "inspect-store", "-q", "--config", "config.yaml", "--max-anchors", "10",
                      "--out", "second")
    assert code == 0, err
    assert err.strip().endswith("diagnostics written to second")
    second = json.loads((run / "second" / "inspect.json").read_text())
    assert second["fidelity"]["classifier"]["cached"]
    assert second["fidelity"]["classifier"]["path"] == first["fidelity"]["classifier"]["path"]
    assert second["fidelity"] == {**first["fidelity"], "classifier": second["fidelity"]["classifier"]}
    assert second["diversity"] == first["diversity"]


@needs_fmnist
def test_inspect_store_bad_input_is_one_line_and_exit_2(fmnist_run, tmp_path, monkeypatch, capsys) -> None:
    run = fmnist_run
    base = ("inspect-store", "-q", "--config", "config.yaml")
    _one_error_line(*_main(monkeypatch, capsys, run, *base, "--store", str(tmp_path / "nothing")), "no synthetic store")
    # A store made from other images than the run's training split.
    others = load_dataset(DataConfig(name="fashion_mnist", root=FMNIST), "test").images[:40]
    _make_store(tmp_path / "other", others, np.repeat(others[:, None], 3, axis=1), shard_size=16, name="fashion_mnist")
    _one_error_line(*_main(monkeypatch, capsys, run, *base, "--store", str(tmp_path / "other")), "made from different images")
    _one_error_line(*_main(monkeypatch, capsys, run, *base, "--encoder", str(tmp_path / "no.pt")), "no.pt")
    _one_error_line(*_main(monkeypatch, capsys, run, *base, "--max-anchors", "0"), "--max-anchors")
    _one_error_line(*_main(monkeypatch, capsys, run, *base, "--set", "data.subset=41"), "41")
    assert not (tmp_path / "other" / "inspect").exists()


def test_inspect_store_help_lists_its_options() -> None:
    from typer.testing import CliRunner

    from synthpos.cli import app

    result = CliRunner().invoke(app, ["inspect-store", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--config", "--set", "--store", "--encoder", "--max-anchors", "--out"):
        assert option in result.output


@needs_fmnist
def test_inspect_store_fid_writes_named_numbers_and_their_protocol(fmnist_run, tmp_path, monkeypatch, capsys) -> None:
    """--fid: judge features by default (never named plain FID); bad settings are one line, nothing written.

    A run with --fid-weights is left to tests/evaluation/test_fid.py: the 2048-d covariances
    alone take half a minute on a loaded 2-core CPU.
    """
    from synthpos.evaluation.fid import file_sha256

    run = fmnist_run
    base = ("inspect-store", "-q", "--config", "config.yaml", "--max-anchors", "20")
    code, err = _main(monkeypatch, capsys, run, *base, "--fid", "--fid-images", "50", "--kid-subset-size", "30",
                      "--kid-subsets", "4", "--out", str(tmp_path / "judge"))
    assert code == 0, err
    fk = json.loads((tmp_path / "judge" / "inspect.json").read_text())["fid_kid"]
    assert fk["fid"]["name"] == "FID (judge features)" and fk["kid"]["name"] == "KID (judge features)"
    assert fk["fid"]["value"] > 0 and np.isfinite(fk["kid"]["mean"]) and fk["kid"]["std"] >= 0
    p = fk["protocol"]
    assert (p["candidates_count"], p["real_count"], p["kid_subset_size"], p["kid_subsets"]) == (50, 50, 30, 4)
    assert p["feature_network"].startswith("the dataset's judge") and not p["standard"]
    assert p["feature_file_sha256"] == file_sha256(Path(p["feature_file"]))
    assert p["real_split"].startswith("fashion_mnist/train (whole split, 60000") and "first 20 anchors" in p["candidates_from"]

    _one_error_line(*_main(monkeypatch, capsys, run, *base, "--fid-weights", str(tmp_path / "no.pth"),
                           "--out", str(tmp_path / "bad")), "no.pth")
    _one_error_line(*_main(monkeypatch, capsys, run, *base, "--fid", "--kid-subsets", "0",
                           "--out", str(tmp_path / "bad")), "--kid-subsets")
    assert not (tmp_path / "bad").exists()
