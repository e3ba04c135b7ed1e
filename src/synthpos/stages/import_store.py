"""``synthpos import-store``: a paper's published synthetic set made into a store for the run's training split."""

from __future__ import annotations

import sys
from pathlib import Path

from synthpos.config import RunConfig


def command(config: RunConfig, source: Path, layout: str, store: Path | None = None, variants: int = 10,
            show_progress: bool = True) -> None:
    from synthpos.data.import_store import import_store_stage
    from synthpos.stages.runner import writing_into

    with writing_into(store or config.store_dir, config.run_dir):  # the run's store: one writer, as for generate
        result = import_store_stage(config, source, layout, store, variants, show_progress=show_progress)
    print(f"store written to {result.path} ({len(result)} anchors x {result.candidates} candidates)", file=sys.stderr)
