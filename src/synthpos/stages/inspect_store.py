"""``synthpos inspect-store``: a store's positives judged (fidelity, diversity, a grid, FID/KID), or
with ``--verify`` its integrity (every shard hashed against the manifest).

Not a row of the table: it reads a store and writes only under ``<store>/inspect`` (or ``out``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from synthpos.config import RunConfig


def command(config: RunConfig, store: Path | None = None, encoder: Path | None = None, max_anchors: int | None = None,
            out: Path | None = None, show_progress: bool = True, verify: bool = False, fid: bool = False,
            fid_weights: Path | None = None, fid_images: int = 10_000, kid_subset_size: int = 1000,
            kid_subsets: int = 100) -> None:
    if verify:
        from synthpos.evaluation.store_diagnostics import verify_command

        verify_command(store or config.store_dir)
        return
    from synthpos.evaluation.store_diagnostics import inspect_store_stage, print_report

    report = inspect_store_stage(config, store, encoder, max_anchors, out, show_progress=show_progress,
                                 fid=fid or fid_weights is not None, fid_weights=fid_weights, fid_images=fid_images,
                                 kid_subset_size=kid_subset_size, kid_subsets=kid_subsets)
    print_report(report)
    print(f"diagnostics written to {Path(report['grid']).parent}", file=sys.stderr)
