"""Dataset readers on small files written in the real on-disk formats."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthpos.config import DataConfig
from synthpos.data.datasets import ImageDataset, find_data_root, load_dataset, read_idx
from synthpos.errors import SynthposError

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests must not depend on the developer's $SYNTHPOS_DATA.
    monkeypatch.delenv("SYNTHPOS_DATA", raising=False)


def _write_idx(path: Path, array: np.ndarray, gz: bool = True) -> None:
    """The MNIST idx format: 0, 0, type 0x08 (ubyte), ndim, big-endian int32 dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _fake_fashion_mnist(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        _write_idx(folder / (f"{stem}.gz" if gz else stem), array, gz=gz)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    arrays = _fake_fashion_mnist(tmp_path, gz=gz)
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


def test_items_carry_their_index(tmp_path: Path) -> None:
    arrays = _fake_fashion_mnist(tmp_path)
    train = load_dataset(DataConfig(name="fashion_mnist", root=tmp_path), "train")
    index, image, label = train[3]
    assert index == 3 and label == int(arrays["train-labels-idx1-ubyte"][3])
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8
    np.testing.assert_array_equal(image[0].numpy(), arrays["train-images-idx3-ubyte"][3])
    image.zero_()  # the item is a copy: the dataset is untouched
    assert train.images[3].any()
    # The default collate stacks items into a batch.
    indices, images, labels = next(iter(torch.utils.data.DataLoader(train, batch_size=4)))
    assert indices.tolist() == [0, 1, 2, 3] and images.shape == (4, 1, 28, 28) and labels.dtype == torch.int64
    batch_images, batch_labels = train.batch(torch.tensor([5, 1]))
    assert torch.equal(batch_images[0], train[5][1]) and batch_labels.tolist() == [train[5][2], train[1][2]]


def test_subset_take_and_resize(tmp_path: Path) -> None:
    arrays = _fake_fashion_mnist(tmp_path)
    train = load_dataset(DataConfig(name="fashion_mnist", root=tmp_path, subset=5), "train")
    assert len(train) == 5
    test = load_dataset(DataConfig(name="fashion_mnist", root=tmp_path, subset=2), "test")
    assert len(test) == 5  # subset applies to the training split only

    full = load_dataset(DataConfig(name="fashion_mnist", root=tmp_path), "train")
    head = full.take(4)
    assert len(head) == 4 and np.shares_memory(head.images, full.images)
    np.testing.assert_array_equal(head.labels, full.labels[:4])

    resized = load_dataset(DataConfig(name="fashion_mnist", root=tmp_path, image_size=32, subset=3), "train")
    assert resized.image_shape == (32, 32, 1) and resized.images.dtype == np.uint8 and len(resized) == 3
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(arrays["train-images-idx3-ubyte"][:3]).float()[:, None], size=(32, 32), mode="bilinear", antialias=True
    )
    assert np.abs(resized.images[..., 0].astype(int) - expected[:, 0].round().numpy().astype(int)).max() <= 1

    with pytest.raises(SynthposError, match="data.subset=100"):
        load_dataset(DataConfig(name="fashion_mnist", root=tmp_path, subset=100), "train")


def test_missing_data_names_every_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    monkeypatch.setattr("synthpos.data.datasets.FashionMNIST.system_root", tmp_path / "no-system")
    monkeypatch.delenv("SYNTHPOS_DATA", raising=False)
    with pytest.raises(SynthposError) as err:
        find_data_root("fashion_mnist", None)
    message = str(err.value)
    assert "\n" not in message
    assert "data.root (unset)" in message and "$SYNTHPOS_DATA (unset)" in message and str(tmp_path / "no-system") in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.root" in message

    # A folder the user names is the only place looked at, even when the data exists elsewhere.
    _fake_fashion_mnist(tmp_path / "no-system")
    with pytest.raises(SynthposError) as err:
        find_data_root("fashion_mnist", empty)
    assert f"data.root={empty}" in str(err.value) and "SYNTHPOS_DATA" not in str(err.value)

    env = tmp_path / "env"
    monkeypatch.setenv("SYNTHPOS_DATA", str(env))
    with pytest.raises(SynthposError, match="CIFAR-10 not found") as err:
        load_dataset(DataConfig(name="cifar10"), "train")
    assert str(env) in str(err.value) and str(env / "cifar10") in str(err.value)


def test_data_root_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    _fake_fashion_mnist(explicit)
    _fake_fashion_mnist(env / "fashion_mnist")
    monkeypatch.setattr("synthpos.data.datasets.FashionMNIST.system_root", tmp_path / "no-system")
    monkeypatch.setenv("SYNTHPOS_DATA", str(env))
    assert find_data_root("fashion_mnist", explicit) == explicit
    assert find_data_root("fashion_mnist", None) == env / "fashion_mnist"  # the <name> sub-folder
    _fake_fashion_mnist(env)
    assert find_data_root("fashion_mnist", None) == env


def test_corrupt_idx_raises(tmp_path: Path) -> None:
    _fake_fashion_mnist(tmp_path)
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


def _write_cifar(folder: Path, hundred: bool, per_batch: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's python layout with Python-2 style (bytes) keys; returns all train images/labels."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    label_key = b"fine_labels" if hundred else b"labels"
    n_classes = 100 if hundred else 10
    names = [f"class{i}".encode() for i in range(n_classes)]

    def batch(n: int) -> dict[bytes, object]:
        return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), label_key: rng.integers(0, n_classes, n).tolist()}

    def dump(name: str, obj: dict) -> None:
        with (folder / name).open("wb") as f:
            pickle.dump(obj, f)

    if hundred:
        train = batch(2 * per_batch)
        dump("train", train)
        dump("test", batch(3))
        dump("meta", {b"fine_label_names": names, b"coarse_label_names": names[:20]})
        return train[b"data"], np.asarray(train[label_key])
    batches = [batch(per_batch) for _ in range(5)]
    for i, b in enumerate(batches, 1):
        dump(f"data_batch_{i}", b)
    dump("test_batch", batch(3))
    dump("batches.meta", {b"label_names": names, b"num_cases_per_batch": per_batch})
    return np.concatenate([b[b"data"] for b in batches]), np.concatenate([b[label_key] for b in batches])


@pytest.mark.parametrize("point_at_batches_folder", [False, True])
def test_cifar10(tmp_path: Path, point_at_batches_folder: bool) -> None:
    data, labels = _write_cifar(tmp_path / "cifar-10-batches-py", hundred=False)
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
    data, labels = _write_cifar(tmp_path / "cifar-100-python", hundred=True)
    train = load_dataset(DataConfig(name="cifar100", root=tmp_path, image_size=16), "train")
    assert train.images.shape == (8, 16, 16, 3) and train.num_classes == 100
    np.testing.assert_array_equal(train.labels, labels)
    assert len(load_dataset(DataConfig(name="cifar100", root=tmp_path / "cifar-100-python"), "test")) == 3


def test_cifar_garbled_batch(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "cifar-10-batches-py", hundred=False)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(SynthposError, match="data_batch_3"):
        load_dataset(DataConfig(name="cifar10", root=tmp_path), "train")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(SynthposError, match="data_batch_3 is missing"):
        load_dataset(DataConfig(name="cifar10", root=tmp_path), "train")


def _png(path: Path, size: tuple[int, int], colour: tuple[int, int, int], mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).convert(mode).save(path)


def test_image_folder_labelled(tmp_path: Path) -> None:
    train_root, test_root = tmp_path / "train", tmp_path / "test"
    _png(train_root / "cat" / "a.png", (12, 10), (255, 0, 0))
    _png(train_root / "cat" / "b.jpg", (12, 10), (250, 0, 0))
    _png(train_root / "dog" / "c.png", (12, 10), (0, 0, 255), mode="L")  # grayscale file: becomes RGB
    _png(train_root / "zebra" / "d.bmp", (12, 10), (0, 255, 0))
    _png(test_root / "dog" / "e.png", (12, 10), (0, 0, 255))
    _png(test_root / "zebra" / "f.webp", (12, 10), (0, 255, 0))
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
        _png(tmp_path / "flat" / f"{i}.png", (9, 9), (i * 40, 0, 0))
    flat = load_dataset(DataConfig(name="image_folder", root=tmp_path / "flat"), "train")
    assert flat.labels is None and flat.classes == [] and flat.num_classes == 0
    assert flat.images.shape == (3, 9, 9, 3) and flat[1][2] == -1

    _png(tmp_path / "mixed" / "0.png", (9, 9), (0, 0, 0))
    _png(tmp_path / "mixed" / "1.png", (16, 9), (0, 0, 0))
    with pytest.raises(SynthposError, match="data.image_size"):
        load_dataset(DataConfig(name="image_folder", root=tmp_path / "mixed"), "train")
    assert load_dataset(DataConfig(name="image_folder", root=tmp_path / "mixed", image_size=12), "train").image_shape == (12, 12, 3)

    (tmp_path / "none").mkdir()
    with pytest.raises(SynthposError, match="no images"):
        load_dataset(DataConfig(name="image_folder", root=tmp_path / "none"), "train")
    (tmp_path / "flat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(SynthposError, match="broken.png"):
        load_dataset(DataConfig(name="image_folder", root=tmp_path / "flat"), "train")


def test_image_dataset_validates_shapes() -> None:
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset("x", "train", np.zeros((2, 4, 4), np.uint8), None, [], (0.5,), (0.5,))


@pytest.mark.skipif(not (SYSTEM_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist() -> None:
    train = load_dataset(DataConfig(name="fashion_mnist"), "train")
    test = load_dataset(DataConfig(name="fashion_mnist"), "test")
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert abs(train.images.mean() / 255 - train.mean[0]) < 1e-3
