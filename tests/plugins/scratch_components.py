"""A user's own generator and dataset, each with settings of its own, registered from outside synthpos.

The tests copy this file to a temporary folder and import it from there (in-process for the
contracts, through ``SYNTHPOS_PLUGINS`` for a recipe run by the CLI), as a user's module would be.

- ``shift`` (``generate.kind: shift``; settings ``generate.shift.*``): candidate c of an anchor is the
  anchor brightened by ``amount * (c + 1)`` grey levels plus seeded noise of ``+-jitter`` levels.
  Its old flat key ``generate.shift_amount`` moved to ``generate.shift.amount``.
- ``stripes`` (``data.name: stripes``; settings ``data.stripes.*``): ``count`` grey images of
  ``side`` px, vertical (class 0) or horizontal (class 1) stripes, phase drawn from the seed written
  in ``<root>/stripes.txt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from synthpos.data.datasets import DatasetSource, ImageDataset, register_dataset
from synthpos.generators.clsp import derive_seed
from synthpos.generators.registry import CandidateGenerator, register_generator


class ShiftSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: int = Field(1, ge=0, le=255)
    jitter: int = Field(2, ge=0, le=255)


@register_generator("shift")
class ShiftGenerator(CandidateGenerator):
    """Brightened, noised copies of each anchor: (n, H, W, C) uint8 -> (n, K, H, W, C) uint8."""

    settings = ShiftSettings
    moved = {"shift_amount": "amount"}

    def __init__(self, generator_dir: Path | None, settings: ShiftSettings | None, seed: int, device: Any = None, *,
                 candidates: int, **unused: Any) -> None:
        self.options = settings if settings is not None else ShiftSettings()
        self.seed, self.candidates = seed, candidates

    def record(self) -> dict[str, Any]:
        return {"kind": "shift", "amount": self.options.amount, "jitter": self.options.jitter, "seed": self.seed}

    def generate(self, anchors: np.ndarray, first_index: int, labels: np.ndarray | None = None, bar: Any = None) -> np.ndarray:
        n, k, jitter = len(anchors), self.candidates, self.options.jitter
        out = np.empty((n, k, *anchors.shape[1:]), dtype=np.uint8)
        for i in range(n):
            for c in range(k):
                rng = np.random.default_rng(derive_seed(self.seed, first_index + i, c))
                noise = rng.integers(-jitter, jitter + 1, size=anchors.shape[1:])
                out[i, c] = np.clip(anchors[i].astype(np.int64) + self.options.amount * (c + 1) + noise, 0, 255)
        if bar is not None:
            bar.update(n * k)
        return out


class StripesSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    side: int = Field(8, ge=4)
    count: int = Field(6, ge=3)


@register_dataset("stripes")
class Stripes(DatasetSource):
    """Stripe images made from the seed in ``<root>/stripes.txt``; the test split is the next seed's."""

    pretty = "Stripes"
    num_classes = 2
    settings = StripesSettings
    how_to_fix = "pass --set data.root=DIR with a stripes.txt holding a seed"

    @classmethod
    def has_data(cls, folder: Path) -> bool:
        return (folder / "stripes.txt").is_file()

    @classmethod
    def load(cls, split, root, settings=None, *, test_root=None, image_size=None) -> ImageDataset:
        s = settings if settings is not None else StripesSettings()
        seed = int((cls.find_root(root) / "stripes.txt").read_text()) + (split == "test")
        rng = np.random.default_rng(seed)
        labels = np.arange(s.count, dtype=np.int64) % 2
        images = np.empty((s.count, s.side, s.side, 1), dtype=np.uint8)
        line = (np.arange(s.side) + rng.integers(0, s.side, size=(s.count, 1))) % 4 < 2  # (count, side)
        for i, label in enumerate(labels):
            bars = np.where(line[i], 230, 20).astype(np.uint8)
            images[i, ..., 0] = np.tile(bars, (s.side, 1)) if label == 0 else np.tile(bars[:, None], (1, s.side))
        scaled = images.astype(np.float64) / 255
        return ImageDataset(name=cls.name, split=split, images=images, labels=labels, classes=["vertical", "horizontal"],
                            mean=(float(scaled.mean()),), std=(float(scaled.std()),))
