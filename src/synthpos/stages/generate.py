"""``synthpos generate``: stage 2, synthetic positives into the store (resumes where it stopped)."""

from __future__ import annotations

import os
import sys

from synthpos.config import RunConfig
from synthpos.stages.runner import run_stage


def command(config: RunConfig, show_progress: bool = True) -> None:
    store, _ = run_stage("generate", config, show_progress=show_progress, explicit=True)
    if os.environ.get("RANK", "0") == "0":  # under torchrun: one line, not one per process
        print(f"store written to {store.path} ({len(store)} anchors x {store.candidates} candidates)", file=sys.stderr)
