"""Evaluation protocols: validation carve, kNN grid and probe selection against scikit-learn, records."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthpos.config import EvaluateConfig
from synthpos.evaluation.paper_probe import paper_linear_probe
from synthpos.evaluation.protocols import run_protocols
from synthpos.evaluation.splits import balanced_subset, validation_split

neighbors = pytest.importorskip("sklearn.neighbors")
linear_model = pytest.importorskip("sklearn.linear_model")

C, D = 5, 16


def _blobs(n: int, m: int, seed: int = 0, noise: float = 1.3):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(C, D))
    y, yt = rng.integers(0, C, n), rng.integers(0, C, m)
    x = centers[y] + noise * rng.normal(size=(n, D))
    xt = centers[yt] + noise * rng.normal(size=(m, D))
    return torch.tensor(x, dtype=torch.float32), y, torch.tensor(xt, dtype=torch.float32), yt


def _sk_knn(x, y, q, k, t):
    clf = neighbors.KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                                         weights=lambda d: np.exp((1 - d) / t))
    return clf.fit(x.numpy(), y).predict(q.numpy())


def test_validation_split_is_a_stratified_partition() -> None:
    labels = np.repeat(np.arange(4), [100, 50, 20, 3])
    fit, val = validation_split(labels, 0.1, seed=3)
    assert np.array_equal(np.sort(np.concatenate([fit, val])), np.arange(len(labels)))
    assert [int((labels[val] == c).sum()) for c in range(4)] == [10, 5, 2, 1]
    assert np.array_equal(validation_split(labels, 0.1, seed=3)[1], val)
    assert not np.array_equal(validation_split(labels, 0.1, seed=4)[1], val)


def test_balanced_subsets_nest_and_keep_every_class() -> None:
    labels = np.repeat(np.arange(10), 100)
    one, ten = balanced_subset(labels, 0.01, 0), balanced_subset(labels, 0.1, 0)
    assert np.bincount(labels[one]).tolist() == [1] * 10 and np.bincount(labels[ten]).tolist() == [10] * 10
    assert set(one) <= set(ten)


def test_knn_k_chosen_on_validation_as_sklearn_then_test_scored_once() -> None:
    x, y, xt, yt = _blobs(600, 300)
    cfg = EvaluateConfig(linear_protocols=[], label_fractions=[1.0])
    summary, records = run_protocols(x, y, xt, yt, C, cfg, seed=1)
    fit, val = validation_split(y, cfg.validation_fraction, 1)
    ks = [5, 10, 20, 50, 100, 200]
    val_acc = [float((_sk_knn(x[fit], y[fit], x[val], k, 0.07) == y[val]).mean()) for k in ks]
    best = ks[int(np.argmax(val_acc))]  # argmax: the first (smallest k) on a tie, as ours
    (knn,) = records
    assert knn["hyper_parameters"]["k"] == best
    assert [knn["selection"]["validation_top1"][str(k)] for k in ks] == pytest.approx(val_acc)
    assert summary["knn_top1"] == pytest.approx(float((_sk_knn(x, y, xt, best, 0.07) == yt).mean()))
    assert knn["train_labels"] == 600 and knn["test_images"] == 300 and knn["selection"]["split"] == "validation"


def test_test_labels_never_choose_a_hyper_parameter() -> None:
    x, y, xt, yt = _blobs(500, 200, seed=2)
    cfg = EvaluateConfig(linear={"epochs": 3}, linear_protocols=["fast"], label_fractions=[1.0])
    _, a = run_protocols(x, y, xt, yt, C, cfg)
    _, b = run_protocols(x, y, xt, np.random.default_rng(0).permutation(yt), C, cfg)
    assert [r["hyper_parameters"] for r in a] == [r["hyper_parameters"] for r in b]
    assert [r["selection"] for r in a] == [r["selection"] for r in b]
    assert a[0]["value"] != b[0]["value"]  # the test score itself does see them


def test_fast_probe_chooses_the_weight_decay_with_the_best_validation_score() -> None:
    # Few, noisy training images in many dimensions: strong weight decay helps, and validation must see it.
    x, y, xt, yt = _blobs(150, 600, seed=4, noise=3.0)
    x, xt = torch.cat([x, torch.randn(150, 200)], 1), torch.cat([xt, torch.randn(600, 200)], 1)
    cfg = EvaluateConfig(linear={"epochs": 30, "lr_grid": [0.1], "weight_decay_grid": [0.0, 0.3]},
                         linear_protocols=["fast"], label_fractions=[1.0], validation_fraction=0.3)
    _, records = run_protocols(x, y, xt, yt, C, cfg)
    fast = records[1]
    scores = fast["selection"]["validation_top1"]
    best = max(scores, key=scores.get)
    assert best == f"lr=0.1,weight_decay={fast['hyper_parameters']['weight_decay']:g}"
    assert len(scores) == 2


def test_paper_probe_close_to_sklearn_logistic_regression() -> None:
    x, y, xt, yt = _blobs(3000, 1500, seed=5)
    ours = paper_linear_probe(x, x, torch.from_numpy(y), xt, torch.from_numpy(yt), C, epochs=20)
    ref = linear_model.LogisticRegression(max_iter=5000).fit(x.numpy(), y).score(xt.numpy(), yt)
    assert abs(ours["top1"] - ref) <= 0.02, (ours, ref)


def test_label_fractions_and_records_say_how_many_labels() -> None:
    x, y, xt, yt = _blobs(1000, 300, seed=6)
    cfg = EvaluateConfig(linear={"epochs": 5, "lr_grid": None, "weight_decay_grid": None}, knn_k=20,
                         linear_protocols=["fast", "paper"], linear_paper={"epochs": 3})
    summary, records = run_protocols(x, y, xt, yt, C, cfg, mirror=x.flip(1))
    by = {(r["protocol"], r["label_fraction"]): r for r in records}
    assert set(by) == {("knn", 1.0), ("linear-fast", 1.0), ("linear-fast", 0.1), ("linear-fast", 0.01),
                       ("linear-paper", 1.0)}
    assert by[("linear-fast", 0.1)]["train_labels"] == pytest.approx(100, abs=C)
    assert by[("linear-fast", 0.01)]["train_labels"] == pytest.approx(10, abs=C)
    assert summary["linear_top1@0.01"] < summary["linear_top1"]  # 10 labels are worse than 1000 on overlapping blobs
    assert by[("linear-paper", 1.0)]["hyper_parameters"]["standardized"] is False
    assert all(r["scored_on"] == "test" and r["seed"] == 0 for r in records)
