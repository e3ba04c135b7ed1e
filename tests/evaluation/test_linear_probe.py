"""linear_probe against scikit-learn's LogisticRegression."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthpos.evaluation import linear_probe

linear_model = pytest.importorskip("sklearn.linear_model")
pipeline = pytest.importorskip("sklearn.pipeline")
preprocessing = pytest.importorskip("sklearn.preprocessing")

NUM_CLASSES = 6
DIM = 32


def _blobs(seed: int = 0, n_train: int = 4000, n_test: int = 2000, scale: float = 5.0, shift: float = 3.0):
    """Gaussian blobs that overlap a little (the best accuracy is below 100%),
    on a deliberately large, shifted scale that standardisation must undo.

    The training set is large next to the 32 * 6 weights so that the choice of
    regulariser (early stopping here, L2 in scikit-learn) barely matters.
    """
    rng = np.random.default_rng(seed)
    centers = 0.6 * rng.normal(size=(NUM_CLASSES, DIM))

    def sample(n: int):
        y = rng.integers(0, NUM_CLASSES, size=n)
        x = centers[y] + rng.normal(size=(n, DIM))
        return torch.from_numpy((scale * x + shift).astype(np.float32)), torch.from_numpy(y)

    return (*sample(n_train), *sample(n_test))


def _sklearn_accuracy(x_train, y_train, x_test, y_test, standardize: bool) -> float:
    clf = linear_model.LogisticRegression(max_iter=5000)
    if standardize:
        clf = pipeline.make_pipeline(preprocessing.StandardScaler(), clf)
    clf.fit(x_train.numpy(), y_train.numpy())
    return float(clf.score(x_test.numpy(), y_test.numpy()))


def test_close_to_logistic_regression() -> None:
    x_train, y_train, x_test, y_test = _blobs()
    result = linear_probe(x_train, y_train, x_test, y_test, NUM_CLASSES, epochs=30)
    refs = [
        _sklearn_accuracy(x_train, y_train, x_test, y_test, standardize=False),
        _sklearn_accuracy(x_train, y_train, x_test, y_test, standardize=True),
    ]

    assert set(result) == {"top1", "train_top1", "epochs"}
    assert result["epochs"] == 30
    assert 0.0 <= result["top1"] <= 1.0 and 0.0 <= result["train_top1"] <= 1.0
    for ref in refs:
        assert abs(result["top1"] - ref) <= 0.02, (result["top1"], refs)
    assert result["top1"] > 2.0 / NUM_CLASSES  # clearly above chance
    assert result["train_top1"] >= result["top1"] - 0.05


def test_default_hyperparameters_work() -> None:
    x_train, y_train, x_test, y_test = _blobs(seed=1, n_train=2000, n_test=1000)
    result = linear_probe(x_train, y_train, x_test, y_test, NUM_CLASSES)
    assert result["epochs"] == 100
    ref = _sklearn_accuracy(x_train, y_train, x_test, y_test, standardize=True)
    assert abs(result["top1"] - ref) <= 0.02, (result["top1"], ref)


def test_same_seed_same_result_other_seed_still_fine() -> None:
    x_train, y_train, x_test, y_test = _blobs(seed=2, n_train=400, n_test=400)
    kwargs = dict(epochs=10, batch_size=32, momentum=0.9, lr=0.1, weight_decay=1e-4)
    a = linear_probe(x_train, y_train, x_test, y_test, NUM_CLASSES, seed=7, **kwargs)
    b = linear_probe(x_train, y_train, x_test, y_test, NUM_CLASSES, seed=7, **kwargs)
    c = linear_probe(x_train, y_train, x_test, y_test, NUM_CLASSES, seed=8, **kwargs)
    assert a == b
    assert abs(a["top1"] - c["top1"]) < 0.05


def test_works_on_inference_mode_features() -> None:
    x_train, y_train, x_test, y_test = _blobs(seed=3, n_train=200, n_test=200)
    with torch.inference_mode():
        x_train, x_test = x_train * 1.0, x_test * 1.0
        result = linear_probe(x_train, y_train, x_test, y_test, NUM_CLASSES, epochs=3)
    assert result["top1"] > 1.0 / NUM_CLASSES


def test_input_errors() -> None:
    x_train, y_train, x_test, y_test = _blobs(n_train=20, n_test=10)
    with pytest.raises(ValueError, match="dimension"):
        linear_probe(x_train, y_train, x_test[:, :4], y_test, NUM_CLASSES)
    with pytest.raises(ValueError, match="test_labels"):
        linear_probe(x_train, y_train, x_test, y_test[:-1], NUM_CLASSES)
    with pytest.raises(ValueError, match="num_classes"):
        linear_probe(x_train, y_train, x_test, y_test, num_classes=2)
    with pytest.raises(ValueError, match="milestones"):
        linear_probe(x_train, y_train, x_test, y_test, NUM_CLASSES, milestones=(1.5,))
    with pytest.raises(ValueError, match="epochs"):
        linear_probe(x_train, y_train, x_test, y_test, NUM_CLASSES, epochs=0)
