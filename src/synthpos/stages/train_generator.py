"""``synthpos train-generator``: stage 1, the generator trained on the run's training split."""

from __future__ import annotations

import sys

from synthpos.config import RunConfig
from synthpos.stages.runner import run_stage


def command(config: RunConfig, show_progress: bool = True) -> None:
    path, _ = run_stage("train-generator", config, show_progress=show_progress, explicit=True)
    print(f"generator written to {path}", file=sys.stderr)
