"""``synthpos report``: one self-contained HTML page of finished runs."""

from __future__ import annotations

import sys
from pathlib import Path


def command(run_dirs: list[Path], out: Path | None = None) -> None:
    from synthpos.report.html import write_report
    from synthpos.stages.runner import writing_into

    # report.html goes into the run (a folder that is not there is write_report's one-line error, not a lock's).
    with writing_into(out or run_dirs[0] / "report.html", run_dirs[0], make=False):
        print(f"report: {write_report(run_dirs, out)}", file=sys.stderr)
