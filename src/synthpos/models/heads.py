"""Projection and prediction heads (MLPs) of the joint-embedding methods."""

from __future__ import annotations

from torch import nn


def mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    num_layers: int = 2,
    batch_norm: bool = False,
    last_batch_norm: bool = False,
    last_affine: bool = True,
) -> nn.Sequential:
    """``num_layers`` Linear layers with ReLU between them (and BatchNorm1d before each ReLU with ``batch_norm``).

    ``last_batch_norm`` adds a BatchNorm1d after the last layer (SimSiam, MoCo v3), without
    learnable affine parameters when ``last_affine`` is false (SimSiam). Hidden layers carry
    no bias when followed by BatchNorm (it would be cancelled). Shape: (N, in_dim) -> (N, out_dim).
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1; got {num_layers}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not last_batch_norm))
    if last_batch_norm:
        layers.append(nn.BatchNorm1d(out_dim, affine=last_affine))
    return nn.Sequential(*layers)
