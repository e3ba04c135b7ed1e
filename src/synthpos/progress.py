"""Progress bars for long stages (rich), quiet when disabled or not on rank 0."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self._progress, self._task = progress, task

    def update(self, advance: int = 1, info: str | None = None) -> None:
        if self._progress is None:
            return
        fields = {"info": info} if info is not None else {}
        self._progress.update(self._task, advance=advance, **fields)


@contextmanager
def progress_bar(description: str, total: int, completed: int = 0, enabled: bool = True) -> Iterator[_Bar]:
    """A bar with count, rate, elapsed and remaining time; ``bar.update(n, info=...)``."""
    if not enabled:
        yield _Bar(None, None)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("<"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=total, completed=completed, info="")
        yield _Bar(progress, task)
