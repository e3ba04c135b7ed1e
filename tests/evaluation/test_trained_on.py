"""The second fidelity measure: a classifier trained only on given images, scored on real test images."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from synthpos.config import DataConfig
from synthpos.data import load_dataset
from synthpos.evaluation.fidelity import trained_on


def test_images_that_carry_their_class_score_far_above_images_whose_labels_do_not() -> None:
    # Real images with their labels stand for faithful candidates; the same images with the labels
    # shuffled stand for candidates that lost their anchor's class. Both get the same steps and seed.
    data = DataConfig(name="fashion_mnist")
    train, test = load_dataset(data, "train"), load_dataset(data, "test")
    test = dataclasses.replace(test, images=test.images[:1000], labels=test.labels[:1000])
    images, labels = train.images[:600], train.labels[:600]
    faithful = trained_on(images, labels, train, test, steps=40, batch_size=64)
    shuffled = trained_on(images, np.random.default_rng(0).permutation(labels), train, test, steps=40, batch_size=64)
    assert faithful > 0.6, faithful  # 10 classes: chance is 0.1
    assert shuffled < 0.3, shuffled
    assert trained_on(images, labels, train, test, steps=40, batch_size=64) == faithful  # seeded
