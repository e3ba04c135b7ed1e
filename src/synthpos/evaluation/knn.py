"""Weighted k-nearest-neighbour classification of frozen features.

The monitor used by InstDisc (Wu et al., 2018) and solo-learn: cosine
similarity, the k most similar training samples vote for their class with
weight ``exp(similarity / temperature)``, the class with the largest total
weight wins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["knn_accuracy", "knn_predict"]


def _check_features_labels(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, prefix: str
) -> None:
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"{prefix}_features must be a tensor of shape (N, D); got {shape}")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{prefix}_labels must be a tensor of shape (N,); got {shape}")
    if labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"{prefix}_labels has {labels.shape[0]} entries but {prefix}_features has "
            f"{features.shape[0]} rows; they must match"
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{prefix}_labels must be an integer tensor; got dtype {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"{prefix}_labels must lie in [0, num_classes={num_classes}); "
            f"got values in [{int(labels.min())}, {int(labels.max())}]"
        )


def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Predict classes of ``query_features`` by weighted kNN over the training set.

    Features are L2-normalised; each query's ``k`` most cosine-similar
    training samples vote for their label with weight
    ``exp(similarity / temperature)``; the prediction is the class with the
    largest summed weight (the lowest class index on an exact tie). Queries
    are processed ``chunk_size`` at a time so memory stays at
    O(chunk_size * N) instead of O(M * N). Computation happens on
    ``train_features.device``.

    Args:
        train_features: Features of the labelled set. Shape: (N, D).
        train_labels: Integer labels in ``[0, num_classes)``. Shape: (N,).
        query_features: Features to classify. Shape: (M, D).
        num_classes: Number of classes C.
        k: Number of neighbours; values above N use all N training samples.
        temperature: Softmax-style temperature of the vote weights (> 0).
        chunk_size: Number of queries processed at once (>= 1).

    Returns:
        Predicted labels, int64, on ``query_features.device``. Shape: (M,).

    Raises:
        ValueError: On mismatched shapes, labels out of range, an empty
            training set, or non-positive ``k``, ``temperature``,
            ``chunk_size`` or ``num_classes``.

    Example:
        >>> pred = knn_predict(train_z, train_y, test_z, num_classes=10, k=200)
        >>> accuracy = (pred == test_y).float().mean().item()
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes}")
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    _check_features_labels(train_features, train_labels, num_classes, "train")
    if not isinstance(query_features, torch.Tensor) or query_features.dim() != 2:
        shape = tuple(query_features.shape) if isinstance(query_features, torch.Tensor) else type(query_features).__name__
        raise ValueError(f"query_features must be a tensor of shape (M, D); got {shape}")
    if query_features.shape[1] != train_features.shape[1]:
        raise ValueError(
            f"query_features has dimension {query_features.shape[1]} but train_features has "
            f"{train_features.shape[1]}; they must come from the same model"
        )
    if train_features.shape[0] == 0:
        raise ValueError("train_features is empty; kNN needs at least one training sample")

    device = train_features.device
    dtype = torch.promote_types(train_features.dtype, torch.float32)
    train = F.normalize(train_features.detach().to(dtype), dim=1)
    labels = train_labels.detach().to(device=device, dtype=torch.long)
    k = min(k, train.shape[0])

    predictions = []
    with torch.no_grad():
        for start in range(0, query_features.shape[0], chunk_size):
            query = query_features[start : start + chunk_size].detach().to(device=device, dtype=dtype)
            sim = F.normalize(query, dim=1) @ train.T  # (c, N)
            top_sim, top_idx = sim.topk(k, dim=1)  # (c, k)
            # Shifting by the per-query maximum scales all of a query's
            # weights by the same positive factor, so the argmax is unchanged,
            # but exp() cannot overflow for small temperatures.
            weights = ((top_sim - top_sim[:, :1]) / temperature).exp()
            scores = torch.zeros(query.shape[0], num_classes, device=device, dtype=dtype)
            scores.scatter_add_(1, labels[top_idx], weights)
            predictions.append(scores.argmax(dim=1))
    if not predictions:
        return torch.empty(0, dtype=torch.long, device=query_features.device)
    return torch.cat(predictions).to(query_features.device)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    query_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> float:
    """Fraction of queries that :func:`knn_predict` classifies correctly.

    Args:
        train_features: Features of the labelled set. Shape: (N, D).
        train_labels: Integer labels in ``[0, num_classes)``. Shape: (N,).
        query_features: Features to classify. Shape: (M, D), M >= 1.
        query_labels: True labels of the queries. Shape: (M,).
        num_classes: Number of classes C.
        k: Number of neighbours.
        temperature: Vote-weight temperature (> 0).
        chunk_size: Number of queries processed at once.

    Returns:
        Top-1 accuracy in [0, 1].

    Raises:
        ValueError: As :func:`knn_predict`, or if ``query_labels`` does not
            match ``query_features`` or there are no queries.

    Example:
        >>> acc = knn_accuracy(train_z, train_y, test_z, test_y, num_classes=10)
    """
    _check_features_labels(query_features, query_labels, num_classes, "query")
    if query_features.shape[0] == 0:
        raise ValueError("query_features is empty; accuracy needs at least one query")
    pred = knn_predict(
        train_features, train_labels, query_features, num_classes, k, temperature, chunk_size
    )
    return (pred == query_labels.to(pred.device, torch.long)).double().mean().item()
