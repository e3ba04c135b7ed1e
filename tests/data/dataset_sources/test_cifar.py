"""The CIFAR-10/100 reader on torchvision's python pickles written with Python-2 style keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dataset_files import write_cifar

from synthpos.config import DataConfig
from synthpos.data.datasets import load_dataset
from synthpos.errors import SynthposError


@pytest.mark.parametrize("point_at_batches_folder", [False, True])
def test_cifar10(tmp_path: Path, point_at_batches_folder: bool) -> None:
    data, labels = write_cifar(tmp_path / "cifar-10-batches-py", hundred=False)
    root = tmp_path / "cifar-10-batches-py" if point_at_batches_folder else tmp_path
    train = load_dataset(DataConfig(name="cifar10", root=root), "train")
    test = load_dataset(DataConfig(name="cifar10", root=root), "test")
    assert train.images.shape == (20, 32, 32, 3) and len(test) == 3
    assert train.images.flags.c_contiguous
    # Rows are CHW: pixel (y, x) of channel c sits at c*1024 + y*32 + x.
    assert train.images[2, 5, 7, 1] == data[2, 1024 + 5 * 32 + 7]
    np.testing.assert_array_equal(train.images.transpose(0, 3, 1, 2).reshape(20, -1), data)
    np.testing.assert_array_equal(train.labels, labels)
    assert train.classes[:2] == ["class0", "class1"] and train.num_classes == 10
    assert len(train.mean) == 3 and train[0][1].shape == (3, 32, 32)


def test_cifar100(tmp_path: Path) -> None:
    data, labels = write_cifar(tmp_path / "cifar-100-python", hundred=True)
    train = load_dataset(DataConfig(name="cifar100", root=tmp_path, image_size=16), "train")
    assert train.images.shape == (8, 16, 16, 3) and train.num_classes == 100
    np.testing.assert_array_equal(train.labels, labels)
    assert len(load_dataset(DataConfig(name="cifar100", root=tmp_path / "cifar-100-python"), "test")) == 3


def test_cifar_garbled_batch(tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar-10-batches-py", hundred=False)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(SynthposError, match="data_batch_3"):
        load_dataset(DataConfig(name="cifar10", root=tmp_path), "train")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(SynthposError, match="data_batch_3 is missing"):
        load_dataset(DataConfig(name="cifar10", root=tmp_path), "train")
