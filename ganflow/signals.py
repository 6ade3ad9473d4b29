"""SIGTERM (``timeout``, ``docker stop``, a preempted machine) stops training the way Ctrl-C
does: as a ``KeyboardInterrupt`` in the main thread, between two training steps."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived."""


@contextmanager
def terminate_as_interrupt():
    """Within the block, SIGTERM raises ``Terminated`` (a KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def name_of(interrupt: KeyboardInterrupt) -> str:
    """``SIGTERM`` or ``SIGINT``: what stopped the run."""
    return "SIGTERM" if isinstance(interrupt, Terminated) else "SIGINT"
