"""``synthpos report``: one self-contained HTML page of finished runs."""

from __future__ import annotations

import sys
from pathlib import Path


def command(run_dirs: list[Path], out: Path | None = None) -> None:
    from synthpos.report.html import write_report

    print(f"report: {write_report(run_dirs, out)}", file=sys.stderr)
