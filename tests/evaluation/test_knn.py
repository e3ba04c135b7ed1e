"""Weighted kNN against scikit-learn's KNeighborsClassifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthpos.evaluation import knn_accuracy, knn_predict

neighbors = pytest.importorskip("sklearn.neighbors")

NUM_CLASSES = 5
TEMPERATURE = 0.1


def _clustered(n_train: int = 500, n_query: int = 200, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(NUM_CLASSES, dim))
    y_train = rng.integers(0, NUM_CLASSES, size=n_train)
    y_query = rng.integers(0, NUM_CLASSES, size=n_query)
    # Noise comparable to the centre spread: classes overlap, so the vote
    # weights matter and predictions are not trivially perfect.
    x_train = centers[y_train] + 1.0 * rng.normal(size=(n_train, dim))
    x_query = centers[y_query] + 1.0 * rng.normal(size=(n_query, dim))
    return (
        torch.from_numpy(x_train),
        torch.from_numpy(y_train),
        torch.from_numpy(x_query),
        torch.from_numpy(y_query),
    )


def _sklearn_predict(x_train, y_train, x_query, k: int, temperature: float) -> np.ndarray:
    clf = neighbors.KNeighborsClassifier(
        n_neighbors=k,
        metric="cosine",
        algorithm="brute",
        weights=lambda d: np.exp((1 - d) / temperature),
    )
    clf.fit(x_train.numpy(), y_train.numpy())
    return clf.predict(x_query.numpy())


@pytest.mark.parametrize("k", [1, 10, 200])
def test_equals_sklearn(k: int) -> None:
    x_train, y_train, x_query, y_query = _clustered()
    ours = knn_predict(x_train, y_train, x_query, NUM_CLASSES, k=k, temperature=TEMPERATURE)
    ref = _sklearn_predict(x_train, y_train, x_query, k, TEMPERATURE)
    assert ours.dtype == torch.int64
    assert ours.shape == (x_query.shape[0],)
    np.testing.assert_array_equal(ours.numpy(), ref)
    # Sanity: the problem is neither trivial nor hopeless.
    accuracy = (ours == y_query).double().mean().item()
    assert 0.4 < accuracy < 1.0


def test_equals_sklearn_in_float32_and_other_temperature() -> None:
    x_train, y_train, x_query, _ = _clustered(seed=1)
    ours = knn_predict(x_train.float(), y_train, x_query.float(), NUM_CLASSES, k=20, temperature=0.5)
    ref = _sklearn_predict(x_train, y_train, x_query, 20, 0.5)
    np.testing.assert_array_equal(ours.numpy(), ref)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 200, 5000])
def test_chunk_size_does_not_change_result(chunk_size: int) -> None:
    x_train, y_train, x_query, _ = _clustered(seed=2)
    full = knn_predict(x_train, y_train, x_query, NUM_CLASSES, k=10)
    chunked = knn_predict(x_train, y_train, x_query, NUM_CLASSES, k=10, chunk_size=chunk_size)
    assert torch.equal(full, chunked)


def test_accuracy_is_fraction_of_correct_predictions() -> None:
    x_train, y_train, x_query, y_query = _clustered(seed=3)
    pred = knn_predict(x_train, y_train, x_query, NUM_CLASSES, k=10)
    acc = knn_accuracy(x_train, y_train, x_query, y_query, NUM_CLASSES, k=10)
    assert isinstance(acc, float)
    assert acc == pytest.approx((pred == y_query).double().mean().item())
    assert knn_accuracy(x_train, y_train, x_train, y_train, NUM_CLASSES, k=1) == 1.0


def test_small_temperature_does_not_overflow() -> None:
    x_train, y_train, x_query, _ = _clustered(seed=4)
    pred = knn_predict(x_train.float(), y_train, x_query.float(), NUM_CLASSES, k=50, temperature=1e-3)
    # With a tiny temperature the nearest neighbour dominates the vote.
    nearest = knn_predict(x_train, y_train, x_query, NUM_CLASSES, k=1)
    assert torch.equal(pred, nearest)


def test_k_larger_than_train_set_uses_all_samples() -> None:
    x_train, y_train, x_query, _ = _clustered(n_train=30, seed=5)
    assert torch.equal(
        knn_predict(x_train, y_train, x_query, NUM_CLASSES, k=1000),
        knn_predict(x_train, y_train, x_query, NUM_CLASSES, k=30),
    )


def test_input_errors() -> None:
    x_train, y_train, x_query, y_query = _clustered(n_train=20, n_query=5)
    with pytest.raises(ValueError, match="dimension"):
        knn_predict(x_train, y_train, x_query[:, :3], NUM_CLASSES)
    with pytest.raises(ValueError, match="train_labels"):
        knn_predict(x_train, y_train[:-1], x_query, NUM_CLASSES)
    with pytest.raises(ValueError, match="num_classes"):
        knn_predict(x_train, y_train, x_query, num_classes=2)
    with pytest.raises(ValueError, match="integer"):
        knn_predict(x_train, y_train.double(), x_query, NUM_CLASSES)
    with pytest.raises(ValueError, match="k must"):
        knn_predict(x_train, y_train, x_query, NUM_CLASSES, k=0)
    with pytest.raises(ValueError, match="temperature"):
        knn_predict(x_train, y_train, x_query, NUM_CLASSES, temperature=0.0)
    with pytest.raises(ValueError, match="query_labels"):
        knn_accuracy(x_train, y_train, x_query, y_query[:-1], NUM_CLASSES)
