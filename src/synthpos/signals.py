"""SIGTERM, the signal schedulers and ``kill`` send before SIGKILL: a stage stops at a safe point.

A long stage asks :func:`stop_requests` to turn SIGTERM (and, where asked, Ctrl-C) into a
flag it checks between steps, so its checkpoint holds a finished step, never half an
optimiser update; it then raises :class:`Terminated` (or ``KeyboardInterrupt``), which the
CLI turns into one line and exit code 143 (130).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


_terminations: list[str] = []


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM; finished work and the last checkpoint are kept.

    A KeyboardInterrupt, so code that already saves its work on Ctrl-C does so here too.
    Click turns any KeyboardInterrupt into its Abort (or exit code 130), losing the type:
    :func:`terminated` still says whether it was this one.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        _terminations.append(str(args[0]) if args else "")


def terminated() -> str | None:
    """What the last :class:`Terminated` said, if one was raised in this process."""
    return _terminations[-1] if _terminations else None


class StopRequests:
    """Which stop signal arrived, if any (``signum``)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    def raise_if_requested(self, what: str = "") -> None:
        if self.signum == signal.SIGTERM:
            raise Terminated(what)
        if self.signum == signal.SIGINT:
            raise KeyboardInterrupt(what)


@contextmanager
def stop_requests(sigint: bool = False) -> Iterator[StopRequests]:
    """SIGTERM (and SIGINT with ``sigint``) only set a flag inside the block; the old handlers come back after.

    In a thread other than the main one signals cannot be caught; the flag then stays unset.
    """
    requests = StopRequests()
    if threading.current_thread() is not threading.main_thread():
        yield requests
        return

    def note(signum, frame) -> None:
        requests.signum = signum

    signums = [signal.SIGTERM] + ([signal.SIGINT] if sigint else [])
    old = {s: signal.signal(s, note) for s in signums}
    try:
        yield requests
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` where the code is (for work whose units are atomic files)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame) -> None:
        raise Terminated("stopped by SIGTERM")

    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
