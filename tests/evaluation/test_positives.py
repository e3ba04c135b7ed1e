"""Memorisation and the same-class scale of :mod:`synthpos.evaluation.positives`, against plain loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthpos.evaluation.positives import PositivesStats, memorisation


def _rms(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((x.astype(np.float64) / 255 - y.astype(np.float64) / 255) ** 2)))


@pytest.mark.parametrize("chunk", [7, 8192])
def test_memorisation_matches_a_brute_force_loop(chunk) -> None:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(40, 6, 6, 1), dtype=np.uint8)
    anchor_index = np.array([0, 0, 5, 17, 39, 22])
    candidates = np.stack([
        np.clip(train[0].astype(int) + rng.integers(-5, 6, size=(6, 6, 1)), 0, 255),    # near its anchor
        np.clip(train[3].astype(int) + rng.integers(-5, 6, size=(6, 6, 1)), 0, 255),    # a copy of another image
        train[5],                                                                          # its anchor exactly
        train[30],                                                                         # another image exactly
        rng.integers(0, 256, size=(6, 6, 1)),                                              # unrelated noise
        np.clip(train[22].astype(int) + 40, 0, 255),                                       # a brighter anchor
    ]).astype(np.uint8)
    out = memorisation(candidates, anchor_index, train, chunk=chunk)
    for i, (c, a) in enumerate(zip(candidates, anchor_index)):
        others = [_rms(c, x) for j, x in enumerate(train) if j != a]
        assert out["to_anchor"][i] == pytest.approx(_rms(c, train[a]), abs=1e-9)
        assert out["to_nearest_other"][i] == pytest.approx(min(others), abs=1e-9)
        assert out["closer_to_other"][i] == (min(others) < _rms(c, train[a]))
        assert out["nearest_is_anchor"][i] == (_rms(c, train[a]) <= min(others))
        nearest = min((j for j in range(len(train)) if j != a), key=lambda j: _rms(c, train[j]))
        assert out["anchor_to_that_image"][i] == pytest.approx(_rms(train[a], train[nearest]), abs=1e-9)
        assert out["copies_other"][i] == (min(others) < _rms(train[a], train[nearest]))
    assert out["closer_to_other"].tolist()[:4] == [False, True, False, True]
    # The near-copy of image 3 and the exact copy of image 30 resemble them more than their anchors do.
    assert out["copies_other"].tolist()[:4] == [False, True, False, True]


def test_summary_reports_memorisation_and_the_same_class_scale() -> None:
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, size=(30, 5, 5, 1), dtype=np.uint8)
    labels = rng.integers(0, 3, size=30)
    weights = rng.normal(size=(25, 4))

    def encoder(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(images.reshape(len(images), -1).astype(np.float64) @ weights)

    stats = PositivesStats(mean=(0.5,), std=(0.25,), encoder=encoder, train_images=train)
    anchors = train[:10]
    candidates = np.stack([anchors, train[10:20]], axis=1)  # candidate 0 = its anchor, 1 = another image
    stats.add(anchors[:4], candidates[:4], labels[:4], np.arange(4))
    stats.add(anchors[4:], candidates[4:], labels[4:10], np.arange(4, 10))
    report = stats.summary(train, labels)
    memo = report["memorisation"]
    # Candidate 0 is its anchor (distance 0): never closer to another; candidate 1 is image 10+i exactly.
    assert memo["closer_to_another_training_image"] == pytest.approx(0.5)
    assert memo["nearest_training_image_is_anchor"] == pytest.approx(0.5)
    # Image 10+i copied exactly is nearer to itself (0) than its anchor i is to it.
    assert memo["nearer_to_another_training_image_than_its_anchor_is"] == pytest.approx(0.5)
    assert memo["training_images"] == 30

    same = []
    for i in range(30):
        members = [j for j in range(30) if labels[j] == labels[i]]
        same.append(_rms(train[i], train[members[(members.index(i) + 1) % len(members)]]))
    assert report["diversity"]["pixel"]["between_same_class_real_images"] == pytest.approx(np.mean(same))
    nxt = [_rms(train[i], train[(i + 1) % 30]) for i in range(30)]
    assert report["diversity"]["pixel"]["between_real_images"] == pytest.approx(np.mean(nxt))
    assert report["diversity"]["features"]["between_same_class_real_images"] is not None
