"""``synthpos compare``: CKA between two encoders' representations of the same test images."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from synthpos.config import DataConfig


def command(run_a: Path, run_b: Path, data: DataConfig | None = None, images: int = 2000, arch: str | None = None,
            out: Path | None = None) -> None:
    from synthpos.evaluation.compare import compare_stage

    result = compare_stage(run_a, run_b, data, images, arch, out)
    final = result["final"]
    print(f"CKA of the final features ({result['images']} {result['data']} test images): "
          f"linear {final['linear']:.4f}, RBF {final['rbf']:.4f}, linear unbiased {final['linear_unbiased']:.4f}")
    if "heatmap" in result:
        print(f"layer-wise CKA heat map: {result['heatmap']}", file=sys.stderr)
