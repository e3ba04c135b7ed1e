"""The Fashion-MNIST reader on idx files written byte for byte (gzipped or not), and on the real data when installed."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from dataset_files import fake_fashion_mnist

from synthpos.config import DataConfig
from synthpos.data.datasets import load_dataset, read_idx
from synthpos.errors import SynthposError

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    arrays = fake_fashion_mnist(tmp_path, gz=gz)
    train = load_dataset(DataConfig(name="fashion_mnist", root=tmp_path), "train")
    test = load_dataset(DataConfig(name="fashion_mnist", root=tmp_path), "test")
    assert train.images.shape == (12, 28, 28, 1) and train.images.dtype == np.uint8
    assert train.images.flags.c_contiguous
    np.testing.assert_array_equal(train.images[..., 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(train.labels, arrays["train-labels-idx1-ubyte"])
    assert train.labels.dtype == np.int64
    np.testing.assert_array_equal(test.images[..., 0], arrays["t10k-images-idx3-ubyte"])
    assert (train.name, train.split, test.split) == ("fashion_mnist", "train", "test")
    assert train.num_classes == 10 and train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"
    assert train.channels == 1 and train.image_shape == (28, 28, 1)
    assert train.mean == (0.2860,) and train.std == (0.3530,)


def test_corrupt_idx_raises(tmp_path: Path) -> None:
    fake_fashion_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])  # truncated gzip stream
    with pytest.raises(SynthposError, match="train-images-idx3-ubyte.gz"):
        load_dataset(DataConfig(name="fashion_mnist", root=tmp_path), "train")

    bad_magic = tmp_path / "bad"
    bad_magic.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(SynthposError, match="magic"):
        read_idx(bad_magic)

    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">i", 10) + b"\x00" * 3)  # header says 10, holds 3
    with pytest.raises(SynthposError, match="short"):
        read_idx(short)


@pytest.mark.skipif(not (SYSTEM_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist() -> None:
    train = load_dataset(DataConfig(name="fashion_mnist"), "train")
    test = load_dataset(DataConfig(name="fashion_mnist"), "test")
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert abs(train.images.mean() / 255 - train.mean[0]) < 1e-3
