"""synthpos import-store: CLSP's .npy arrays and GenerativeSSL / GenView JPEG trees, written here in
the official layouts, become stores fingerprinted against the local dataset."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthpos.config import load_config
from synthpos.data import load_dataset
from synthpos.data.datasets import image_folder_files
from synthpos.data.import_store import import_store_stage
from synthpos.data.synthetic_store import SyntheticStore
from synthpos.errors import SynthposError

PER_BATCH = 3  # 5 batches: 15 CIFAR-10 training images


def _write_cifar10(folder: Path, seed: int = 1) -> np.ndarray:
    """torchvision's CIFAR-10 python layout (bytes keys); returns the training images (N, 32, 32, 3)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    batches = []
    for i in range(1, 6):
        data = rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8)
        batches.append(data)
        with (folder / f"data_batch_{i}").open("wb") as f:
            pickle.dump({b"data": data, b"labels": rng.integers(0, 10, PER_BATCH).tolist()}, f)
    with (folder / "test_batch").open("wb") as f:
        pickle.dump({b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [0, 1]}, f)
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return np.concatenate(batches).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _clsp_config(root: Path, tmp: Path, *extra: str):
    return load_config(None, ["data.name=cifar10", f"data.root={root}", f"run_dir={tmp / 'run'}",
                              "generate.shard_size=4", *extra])


def test_clsp_array_imports_in_dataset_order(tmp_path: Path) -> None:
    images = _write_cifar10(tmp_path / "cifar" / "cifar-10-batches-py")
    rng = np.random.default_rng(0)
    # As generate_synthetic_dataset.py writes it: K arrays (N, 32, 32, 3) stacked on axis 1.
    released = np.stack([rng.integers(0, 256, images.shape, dtype=np.uint8) for _ in range(8)], axis=1)
    released[:, 0] = images  # candidate 0 = the anchor itself: the order must line up
    np.save(tmp_path / "synthetic_cifar10_8_candidates.npy", released)
    cfg = _clsp_config(tmp_path / "cifar", tmp_path)
    store = import_store_stage(cfg, tmp_path / "synthetic_cifar10_8_candidates.npy", "clsp", None, 10, show_progress=False)
    assert store.path == cfg.store_dir and store.complete and store.layout.num_shards == 4
    dataset = load_dataset(cfg.data, "train")
    reopened = SyntheticStore.open(store.path, "cifar10", "train", dataset.images)
    assert np.array_equal(np.stack([reopened[i] for i in range(len(reopened))]), released)
    assert np.array_equal(dataset.images, images)
    # Fingerprinted: other local data is a one-line error at open time.
    other = _write_cifar10(tmp_path / "other" / "cifar-10-batches-py", seed=2)
    with pytest.raises(SynthposError, match="different images"):
        SyntheticStore.open(store.path, "cifar10", "train", other)


def test_clsp_array_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    images = _write_cifar10(tmp_path / "cifar" / "cifar-10-batches-py")
    cfg = _clsp_config(tmp_path / "cifar", tmp_path)
    np.save(tmp_path / "short.npy", np.zeros((len(images) - 1, 2, 32, 32, 3), np.uint8))
    with pytest.raises(SynthposError, match=f"candidates for {len(images) - 1} images.*data.subset={len(images) - 1}"):
        import_store_stage(cfg, tmp_path / "short.npy", "clsp", None, 10, show_progress=False)
    np.save(tmp_path / "small.npy", np.zeros((len(images), 2, 28, 28, 3), np.uint8))
    with pytest.raises(SynthposError, match=r"\(28, 28, 3\) images"):
        import_store_stage(cfg, tmp_path / "small.npy", "clsp", None, 10, show_progress=False)
    np.save(tmp_path / "float.npy", np.zeros((len(images), 2, 32, 32, 3), np.float32))
    with pytest.raises(SynthposError, match="uint8"):
        import_store_stage(cfg, tmp_path / "float.npy", "clsp", None, 10, show_progress=False)
    assert not cfg.store_dir.exists()  # nothing written half-way
    # The first N images of the local data, when the set was made for N.
    np.save(tmp_path / "short.npy", np.zeros((len(images) - 1, 2, 32, 32, 3), np.uint8))
    cfg = _clsp_config(tmp_path / "cifar", tmp_path, f"data.subset={len(images) - 1}")
    assert len(import_store_stage(cfg, tmp_path / "short.npy", "clsp", None, 10, show_progress=False)) == len(images) - 1


def _solid(colour: tuple[int, int, int], size: int) -> Image.Image:
    return Image.new("RGB", (size, size), colour)


def _image_tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """An ImageNet-style train folder, <class>/<class>_<n>.JPEG, one solid colour per image."""
    colours = {}
    for c, cls in enumerate(["n01", "n02"]):
        for n in range(3):
            rel = f"{cls}/{cls}_{n}.JPEG"
            colour = (40 * c + 10 * n, 200 - 30 * n, 100)
            (root / cls).mkdir(parents=True, exist_ok=True)
            _solid(colour, 20).save(root / rel, quality=100)
            colours[rel] = colour
    return colours


def _tree_config(train: Path, tmp: Path):
    return load_config(None, ["data.name=image_folder", f"data.root={train}", "data.image_size=16",
                              f"run_dir={tmp / 'run'}", "generate.shard_size=4"])


@pytest.mark.parametrize("layout", ["generativessl", "genview"])
def test_jpeg_tree_imports(layout: str, tmp_path: Path) -> None:
    train = tmp_path / "imagenet" / "train"
    colours = _image_tree(train)
    synthetic = tmp_path / "synthetic" / "train"
    variants = 3 if layout == "generativessl" else 1
    for rel in colours:
        stem, ext = os.path.splitext(rel)
        for k in range(variants):
            # GenerativeSSL: <stem>_<version><ext> (img2img_stable_diff.py); GenView: the same path, at 512 px.
            name = f"{stem}_{k}{ext}" if layout == "generativessl" else rel
            (synthetic / name).parent.mkdir(parents=True, exist_ok=True)
            _solid((10 * k, 250 - colours[rel][1], colours[rel][0]), 24).save(synthetic / name, quality=100)
    cfg = _tree_config(train, tmp_path)
    store = import_store_stage(cfg, synthetic, layout, None, variants, show_progress=False)
    dataset = load_dataset(cfg.data, "train")
    files = image_folder_files(train)
    assert [str(f.relative_to(train)) for f in files] == list(colours)
    assert store.candidates == variants and store.layout.image_shape == (16, 16, 3)
    for i, rel in enumerate(colours):
        # The loader's order: anchor i is the file whose colour it has.
        assert np.abs(dataset.images[i].astype(int) - colours[rel]).max() <= 2
        for k in range(variants):
            expected = (10 * k, 250 - colours[rel][1], colours[rel][0])
            assert np.abs(store[i][k].astype(int) - expected).max() <= 2


def test_jpeg_tree_with_a_missing_variant_is_refused(tmp_path: Path) -> None:
    train = tmp_path / "imagenet" / "train"
    colours = _image_tree(train)
    synthetic = tmp_path / "synthetic"
    for rel in list(colours)[:-1]:
        stem, ext = os.path.splitext(rel)
        (synthetic / rel).parent.mkdir(parents=True, exist_ok=True)
        _solid((0, 0, 0), 8).save(synthetic / f"{stem}_0{ext}")
    cfg = _tree_config(train, tmp_path)
    with pytest.raises(SynthposError, match=r"1 synthetic images are missing .*n02_2_0\.JPEG"):
        import_store_stage(cfg, synthetic, "generativessl", None, 1, show_progress=False)
    with pytest.raises(SynthposError, match="6 synthetic images are missing"):
        import_store_stage(cfg, synthetic, "genview", None, 1, show_progress=False)  # no file of the same name
    assert not cfg.store_dir.exists()
    with pytest.raises(SynthposError, match="data.name=image_folder"):
        import_store_stage(_clsp_config(tmp_path, tmp_path), synthetic, "genview", None, 1, show_progress=False)


def test_cli_import_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from synthpos import cli

    images = _write_cifar10(tmp_path / "cifar" / "cifar-10-batches-py")
    np.save(tmp_path / "bad.npy", np.zeros((2, 1, 32, 32, 3), np.uint8))
    np.save(tmp_path / "good.npy", np.repeat(images[:, None], 2, axis=1))
    common = ["--layout", "clsp", "--set", "data.name=cifar10", "--set", f"data.root={tmp_path / 'cifar'}",
              "--set", f"run_dir={tmp_path / 'run'}", "-q"]
    monkeypatch.setattr(sys, "argv", ["synthpos", "import-store", "--source", str(tmp_path / "bad.npy"), *common])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "candidates for 2 images" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(sys, "argv", ["synthpos", "import-store", "--source", str(tmp_path / "good.npy"), *common])
    cli.main()
    assert f"({len(images)} anchors x 2 candidates)" in capsys.readouterr().err
    assert SyntheticStore.open(tmp_path / "run" / "store", "cifar10", "train", images).complete
