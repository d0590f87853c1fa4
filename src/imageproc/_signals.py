"""Stopping on SIGINT and SIGTERM: :func:`on_stop_signals`, the one handler that
``Processor.run`` and ``imageproc serve`` install. It imports nothing of ours."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Final

__all__ = ["STOP_SIGNALS", "on_stop_signals"]

#: The signals that ask a process to stop: Ctrl-C, and what a service manager sends.
STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def on_stop_signals(callback: Callable[[str], None]) -> Iterator[None]:
    """Within the block, call ``callback`` with the signal's name (``"SIGTERM"``) on each
    SIGINT or SIGTERM instead of the handlers in force; restore those on leaving it.

    From the main thread only, as :func:`signal.signal` requires. ``callback`` runs between two
    bytecodes of the main thread: it should only set flags (an Event, ``should_exit``) and log.
    """

    def handle(signum: int, frame: FrameType | None) -> None:
        callback(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
