"""The image-folder reader: class sub-folders or loose images, the test split numbered like the training one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dataset_files import png

from synthpos.config import DataConfig
from synthpos.data.datasets import image_folder_files, load_dataset, read_image
from synthpos.errors import SynthposError


def test_image_folder_labelled(tmp_path: Path) -> None:
    train_root, test_root = tmp_path / "train", tmp_path / "test"
    png(train_root / "cat" / "a.png", (12, 10), (255, 0, 0))
    png(train_root / "cat" / "b.jpg", (12, 10), (250, 0, 0))
    png(train_root / "dog" / "c.png", (12, 10), (0, 0, 255), mode="L")  # grayscale file: becomes RGB
    png(train_root / "zebra" / "d.bmp", (12, 10), (0, 255, 0))
    png(test_root / "dog" / "e.png", (12, 10), (0, 0, 255))
    png(test_root / "zebra" / "f.webp", (12, 10), (0, 255, 0))
    config = DataConfig(name="image_folder", root=train_root, test_root=test_root)
    train = load_dataset(config, "train")
    assert train.classes == ["cat", "dog", "zebra"] and train.labels.tolist() == [0, 0, 1, 2]
    assert train.images.shape == (4, 10, 12, 3)  # (N, H, W, C): PIL sizes are (W, H)
    assert tuple(train.images[0, 0, 0]) == (255, 0, 0)
    assert len(train.mean) == 3 and all(s > 0 for s in train.std)
    test = load_dataset(config, "test")
    # The test split numbers classes like the training split (dog = 1, not 0).
    assert test.classes == train.classes and test.labels.tolist() == [1, 2]

    resized = load_dataset(config.model_copy(update={"image_size": 8}), "train")
    assert resized.image_shape == (8, 8, 3)

    with pytest.raises(SynthposError, match="data.test_root"):
        load_dataset(DataConfig(name="image_folder", root=train_root), "test")


def test_image_folder_unlabelled_and_sizes(tmp_path: Path) -> None:
    for i in range(3):
        png(tmp_path / "flat" / f"{i}.png", (9, 9), (i * 40, 0, 0))
    flat = load_dataset(DataConfig(name="image_folder", root=tmp_path / "flat"), "train")
    assert flat.labels is None and flat.classes == [] and flat.num_classes == 0
    assert flat.images.shape == (3, 9, 9, 3) and flat[1][2] == -1

    png(tmp_path / "mixed" / "0.png", (9, 9), (0, 0, 0))
    png(tmp_path / "mixed" / "1.png", (16, 9), (0, 0, 0))
    with pytest.raises(SynthposError, match="data.image_size"):
        load_dataset(DataConfig(name="image_folder", root=tmp_path / "mixed"), "train")
    assert load_dataset(DataConfig(name="image_folder", root=tmp_path / "mixed", image_size=12), "train").image_shape == (12, 12, 3)

    (tmp_path / "none").mkdir()
    with pytest.raises(SynthposError, match="no images"):
        load_dataset(DataConfig(name="image_folder", root=tmp_path / "none"), "train")
    (tmp_path / "flat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(SynthposError, match="broken.png"):
        load_dataset(DataConfig(name="image_folder", root=tmp_path / "flat"), "train")


def test_files_are_listed_in_the_order_the_loader_numbers_them(tmp_path: Path) -> None:
    png(tmp_path / "b" / "z.png", (4, 4), (10, 0, 0))
    png(tmp_path / "a" / "deep" / "y.png", (4, 4), (20, 0, 0))
    png(tmp_path / "a" / "x.png", (4, 4), (30, 0, 0))
    files = image_folder_files(tmp_path)
    assert files == [tmp_path / "a" / "deep" / "y.png", tmp_path / "a" / "x.png", tmp_path / "b" / "z.png"]
    data = load_dataset(DataConfig(name="image_folder", root=tmp_path), "train")
    np.testing.assert_array_equal(data.images, np.stack([read_image(f) for f in files]))
    assert data.labels.tolist() == [0, 0, 1]


def test_a_mixed_layout_and_a_test_class_unknown_to_training_are_one_line(tmp_path: Path) -> None:
    png(tmp_path / "train" / "cat" / "a.png", (4, 4), (0, 0, 0))
    png(tmp_path / "train" / "loose.png", (4, 4), (0, 0, 0))
    with pytest.raises(SynthposError, match="both class sub-folders and loose images"):
        load_dataset(DataConfig(name="image_folder", root=tmp_path / "train"), "train")
    (tmp_path / "train" / "loose.png").unlink()
    png(tmp_path / "test" / "emu" / "b.png", (4, 4), (0, 0, 0))
    config = DataConfig(name="image_folder", root=tmp_path / "train", test_root=tmp_path / "test")
    with pytest.raises(SynthposError, match="classes not in the training folder .*: emu"):
        load_dataset(config, "test")
