"""``synthpos pretrain``: stage 3, self-supervised pretraining (resumes from the last checkpoint)."""

from __future__ import annotations

import sys

from synthpos.config import RunConfig
from synthpos.stages.runner import run_stage


def command(config: RunConfig, show_progress: bool = True) -> None:
    path, _ = run_stage("pretrain", config, show_progress=show_progress, explicit=True)
    print(f"backbone written to {path}", file=sys.stderr)
