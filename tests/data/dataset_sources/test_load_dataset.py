"""load_dataset (the package's entry point): ``data.subset`` on the training split, ``data.image_size``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_files import fake_fashion_mnist

from synthpos.config import DataConfig
from synthpos.data.datasets import load_dataset
from synthpos.errors import SynthposError


def test_subset_keeps_the_head_of_the_training_split_only(tmp_path: Path) -> None:
    fake_fashion_mnist(tmp_path)
    train = load_dataset(DataConfig(name="fashion_mnist", root=tmp_path, subset=5), "train")
    assert len(train) == 5
    test = load_dataset(DataConfig(name="fashion_mnist", root=tmp_path, subset=2), "test")
    assert len(test) == 5  # subset applies to the training split only
    with pytest.raises(SynthposError, match="data.subset=100"):
        load_dataset(DataConfig(name="fashion_mnist", root=tmp_path, subset=100), "train")


def test_image_size_resizes_antialiased_bilinear(tmp_path: Path) -> None:
    arrays = fake_fashion_mnist(tmp_path)
    resized = load_dataset(DataConfig(name="fashion_mnist", root=tmp_path, image_size=32, subset=3), "train")
    assert resized.image_shape == (32, 32, 1) and resized.images.dtype == np.uint8 and len(resized) == 3
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(arrays["train-images-idx3-ubyte"][:3]).float()[:, None], size=(32, 32), mode="bilinear", antialias=True
    )
    assert np.abs(resized.images[..., 0].astype(int) - expected[:, 0].round().numpy().astype(int)).max() <= 1


def test_a_split_other_than_train_or_test_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'val'"):
        load_dataset(DataConfig(name="fashion_mnist", root=tmp_path), "val")  # type: ignore[arg-type]
