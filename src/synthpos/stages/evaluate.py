"""``synthpos evaluate``: stage 4, probes on frozen features; the results on stdout, metrics.json written."""

from __future__ import annotations

import json
import sys

from synthpos.config import RunConfig
from synthpos.stages.runner import run_stage


def command(config: RunConfig, show_progress: bool = True) -> None:
    metrics, _ = run_stage("evaluate", config, show_progress=show_progress, explicit=True)
    print(json.dumps(metrics["results"], indent=2))
    for name, base in metrics.get("baselines", {}).items():  # evaluate.checkpoint: an external encoder
        print(f"baseline {name}: {json.dumps(base['results'])}", file=sys.stderr)
    print(f"metrics written to {config.evaluate_dir / 'metrics.json'}", file=sys.stderr)
