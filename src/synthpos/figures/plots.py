"""Plots (matplotlib, written as PNG files): the CKA heat map, training curves, label efficiency."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["cka_heatmap", "training_curves", "label_efficiency_plot"]


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return path


def cka_heatmap(result: dict, path: Path) -> Path:
    """Layer-by-layer CKA matrix of :func:`synthpos.evaluation.compare.compare_encoders` as a heat map."""
    m = np.asarray(result["matrix"])
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * m.shape[1], 1.0 + 0.4 * m.shape[0]))
    im = ax.imshow(m, vmin=0, vmax=1, cmap="magma", origin="lower")
    ax.set_yticks(range(m.shape[0]), result["layers_a"], fontsize=7)
    ax.set_xticks(range(m.shape[1]), result["layers_b"], fontsize=7, rotation=60, ha="right")
    ax.set_ylabel(result.get("a_label") or Path(str(result.get("a", "A"))).parent.name or "A", fontsize=8)
    ax.set_xlabel(result.get("b_label") or Path(str(result.get("b", "B"))).parent.name or "B", fontsize=8)
    ax.set_title(f"minibatch linear CKA (unbiased), {result['images']} test images", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _save(fig, path)


def training_curves(curves: dict[str, dict[str, list[tuple[float, float]]]], path: Path) -> Path:
    """One panel per logged quantity (loss terms, online kNN/probe), one line per run.

    Args:
        curves: ``{run name: {quantity: [(epoch, value), ...]}}``.
    """
    keys = sorted({k for c in curves.values() for k in c})
    cols = min(3, max(1, len(keys)))
    rows = max(1, -(-len(keys) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for run, c in curves.items():
            if key in c and c[key]:
                x, y = zip(*c[key])
                ax.plot(x, y, marker="." if len(x) < 30 else None, label=run)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def label_efficiency_plot(points: dict[str, list[tuple[float, float, float | None]]], path: Path) -> Path:
    """linear-fast top-1 against the share of training labels (log axis), one line per run.

    Args:
        points: ``{run: [(fraction, top1 %, half-width of the 95% interval or None), ...]}``.
    """
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for run, pts in points.items():
        pts = sorted(pts)
        x = [p[0] * 100 for p in pts]
        y = [p[1] for p in pts]
        err = [p[2] or 0 for p in pts]
        ax.errorbar(x, y, yerr=err if any(err) else None, marker="o", capsize=3, label=run)
    ax.set_xscale("log")
    ax.set_xlabel("labels used (% of the training split, class-balanced)", fontsize=8)
    ax.set_ylabel("test top-1 (%): linear-fast, or fine-tune", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)
