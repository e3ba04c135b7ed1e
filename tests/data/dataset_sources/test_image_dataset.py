"""ImageDataset: items carry their index, batches and heads share the held images, shapes are checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_files import fake_fashion_mnist

from synthpos.config import DataConfig
from synthpos.data.datasets import ImageDataset, load_dataset


def test_items_carry_their_index(tmp_path: Path) -> None:
    arrays = fake_fashion_mnist(tmp_path)
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


def test_take_is_the_head_without_a_copy(tmp_path: Path) -> None:
    fake_fashion_mnist(tmp_path)
    full = load_dataset(DataConfig(name="fashion_mnist", root=tmp_path), "train")
    head = full.take(4)
    assert len(head) == 4 and np.shares_memory(head.images, full.images)
    np.testing.assert_array_equal(head.labels, full.labels[:4])


def test_image_dataset_validates_shapes() -> None:
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset("x", "train", np.zeros((2, 4, 4), np.uint8), None, [], (0.5,), (0.5,))
