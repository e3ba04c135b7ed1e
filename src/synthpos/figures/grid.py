"""Image grids: anchors beside their synthetic positives."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from synthpos.data import ImageDataset  # noqa: E402
from synthpos.data.synthetic_store import SyntheticStore  # noqa: E402


def positives_grid(dataset: ImageDataset, store: SyntheticStore, path: Path, rows: int = 10, seed: int = 0) -> Path:
    """A PNG: each row one anchor (left, framed) and its K candidates."""
    rng = np.random.default_rng(seed)
    anchors = np.sort(rng.choice(min(len(dataset), len(store)), size=min(rows, len(store)), replace=False))
    k = store.candidates
    fig, axes = plt.subplots(len(anchors), k + 1, figsize=(1.1 * (k + 1), 1.1 * len(anchors)), squeeze=False)
    cmap = "gray" if dataset.channels == 1 else None
    for r, a in enumerate(anchors):
        images = [dataset.images[a], *store[int(a)]]
        for c, image in enumerate(images):
            ax = axes[r, c]
            ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap=cmap, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(c == 0)
                spine.set_color("tab:red")
                spine.set_linewidth(2)
        if dataset.classes and dataset.labels is not None:
            axes[r, 0].set_ylabel(dataset.classes[dataset.labels[a]], fontsize=6, rotation=0, ha="right", va="center")
    axes[0, 0].set_title("anchor", fontsize=7)
    for c in range(1, k + 1):
        axes[0, c].set_title(f"synthetic {c}", fontsize=7)
    fig.tight_layout(pad=0.2)
    fig.subplots_adjust(left=0.22)  # room for the class names left of the anchors
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, format="png")  # explicit: callers may write to a temporary name
    plt.close(fig)
    return path
