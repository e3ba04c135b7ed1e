"""Tiny copies of each dataset in its real on-disk format, for the reader tests and the contract.

Shared with tests/data/test_stream.py (tests/data/conftest.py puts this folder on the path).
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> None:
    """The MNIST idx format: 0, 0, type 0x08 (ubyte), ndim, big-endian int32 dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def fake_fashion_mnist(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = True) -> dict[str, np.ndarray]:
    """Fashion-MNIST's four idx files of random 28x28 images; returns the arrays by file stem."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        write_idx(folder / (f"{stem}.gz" if gz else stem), array, gz=gz)
    return arrays


def write_cifar(folder: Path, hundred: bool, per_batch: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's python layout with Python-2 style (bytes) keys; returns all train images (N, 3072) and labels."""
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


def png(path: Path, size: tuple[int, int], colour: tuple[int, int, int], mode: str = "RGB") -> None:
    """One single-colour image file of ``size`` (W, H); the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).convert(mode).save(path)
