"""``synthpos inspect-store``: a store's positives judged (fidelity, diversity, a grid, FID/KID), or
with ``--verify`` its integrity (every shard hashed against the manifest).

Not a row of the table. With ``--verify`` it only reads (and stamps the store it verified), so it runs beside a
process that holds the run's lock (a `generate` writing the store, a `pretrain` reading it): it says so, writes
no stamp, and calls shards not written yet unfinished, not damaged. Without it, it writes into the run
(``<store>/inspect`` or ``out``, the fidelity classifier under ``<run_dir>/fidelity``, the store's stamp), so it
takes the lock of the run directories it writes into, like the stages: a second launch is refused.
"""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from pathlib import Path

from synthpos.config import RunConfig
from synthpos.run_lock import LOCK, live_holder, run_lock


def store_runs(config: RunConfig, store: Path) -> list[Path]:
    """The run directories whose writers may be writing ``store``: the folders above it that hold a run lock, and the
    config's run directory when the store is its (``generate.store`` may lie outside it)."""
    store = Path(os.path.abspath(store))
    runs = [folder for folder in store.parents if (folder / LOCK).exists()]
    own = Path(os.path.abspath(config.run_dir))
    if store == Path(os.path.abspath(config.store_dir)) and own not in runs:
        runs.append(own)
    return runs


def command(config: RunConfig, store: Path | None = None, encoder: Path | None = None, max_anchors: int | None = None,
            out: Path | None = None, show_progress: bool = True, verify: bool = False, fid: bool = False,
            fid_weights: Path | None = None, fid_images: int = 10_000, kid_subset_size: int = 1000,
            kid_subsets: int = 100) -> None:
    store_path = Path(store or config.store_dir)
    if verify:
        from synthpos.evaluation.store_diagnostics import verify_command

        verify_command(store_path, next((w for run in store_runs(config, store_path) if (w := live_holder(run))), None))
        return
    from synthpos.evaluation.store_diagnostics import inspect_store_stage, print_report

    with ExitStack() as locks:  # the run it writes into (fidelity/) and the run of the store (<store>/inspect, stamp)
        for run in [config.run_dir, *store_runs(config, store_path)]:
            if Path(run).is_dir():
                locks.enter_context(run_lock(run))
        report = inspect_store_stage(config, store, encoder, max_anchors, out, show_progress=show_progress,
                                     fid=fid or fid_weights is not None, fid_weights=fid_weights, fid_images=fid_images,
                                     kid_subset_size=kid_subset_size, kid_subsets=kid_subsets)
    print_report(report)
    print(f"diagnostics written to {Path(report['grid']).parent}", file=sys.stderr)
