"""``synthpos export``: a run's encoders for timm, torchvision, TorchScript or ONNX, each with a model card."""

from __future__ import annotations

import sys
from pathlib import Path


def command(source: Path, format: str, out: Path, encoder: str | None = None) -> None:
    from synthpos.export import export as export_encoders

    for folder in export_encoders(source, format, out, encoder):
        print(f"exported to {folder} (README.md is its model card)", file=sys.stderr)
