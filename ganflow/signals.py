"""SIGTERM (``timeout``, ``docker stop``, a preempted machine) and SIGHUP (the terminal
closed) stop training the way Ctrl-C does: as a ``KeyboardInterrupt`` in the main thread,
between two calls into TensorFlow."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

STOPPING = (signal.SIGTERM, signal.SIGHUP)  # what stops a run as Ctrl-C does


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived (``signum``)."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__()
        self.signum = signum


@contextmanager
def terminate_as_interrupt():
    """Within the block, SIGTERM and SIGHUP raise ``Terminated`` (a KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum, frame):
        raise Terminated(signum)

    previous = {signum: signal.signal(signum, handler) for signum in STOPPING}
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


def name_of(interrupt: KeyboardInterrupt) -> str:
    """``SIGTERM``, ``SIGHUP`` or ``SIGINT``: what stopped the run."""
    if isinstance(interrupt, Terminated):
        return signal.Signals(interrupt.signum).name
    return "SIGINT"
