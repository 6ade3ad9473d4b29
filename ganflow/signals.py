"""How a run stops: Ctrl-C (SIGINT), SIGTERM (``timeout``, ``docker stop``, a preempted
machine) and SIGHUP (the terminal closed) all stop it the same way, as a ``KeyboardInterrupt``
(``Interrupted``) in the main thread, wherever the run stands: before its MLflow run exists,
while it trains, or while it ends.

Only the first signal interrupts. Those that follow do not cut short what the stop saves (its
checkpoint, the run's status); they make it ``hurried``: waits on the tracking store give up,
what it has not taken stays in the run's journal. Short sections that must not be cut in half
(a checkpoint being written, a metric window being logged) are ``held``: a signal that arrives
within one interrupts when it ends. A stop Python could not raise (its handler ran inside a
garbage collector's or a weak reference's callback, where an exception is only printed) is
``lost``: unless the run already handles a stop, it interrupts at the next ``raise_pending``
(before the first training step, and at each step's end), or when the next signal comes. So
does a stop that C code cleared (``swallowed``): TensorFlow's C++ running Python inside
``tf.nest`` when the handler raised may drop the ``Interrupted`` and fail in its own way, or go
on.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A signal (``signum``) asked the run to stop."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__()
        self.signum = signum


class _State:
    def __init__(self):
        self.depth = 0  # nested terminate_as_interrupt blocks
        self.holding = 0  # nested held blocks
        self.stopping: int | None = None  # the signal that interrupted
        self.pending: int | None = None  # a signal that arrived while held
        self.lost = False  # the stop's Interrupted was raised where Python only prints it
        self.caught = False  # a stop reached code that handles it (``name_of``)
        self.again = 0  # signals after the first
        self.settled = False  # the run is over: signals change nothing


_state = _State()


def _handle(signum, frame):
    if _state.settled:
        return
    if _state.lost and not _state.caught:  # the first never arrived: this one is it
        _state.lost = False
        if _state.holding:
            _state.pending = _state.stopping
            return
        raise Interrupted(_state.stopping)
    if _state.stopping is not None or _state.pending is not None:
        _state.again += 1
        print(f"\n{signal.Signals(signum).name} again: stopping without waiting for the tracking "
              "store (what it has not taken stays in the run's journal)", file=sys.stderr,
              flush=True)
        return
    if _state.holding:
        _state.pending = signum
        return
    _state.stopping = signum
    raise Interrupted(signum)


@contextmanager
def terminate_as_interrupt():
    """Within the block, SIGINT, SIGTERM and SIGHUP raise ``Interrupted``, once (see the
    module's docstring). A SIGINT that the process was started ignoring (a job put in the
    background by a shell) stays ignored. An ``Interrupted`` that C code swallowed into an
    error of its own leaves the block as an ``Interrupted`` (``_resurface``)."""
    outermost = threading.current_thread() is threading.main_thread() and not _state.depth
    previous = {}
    for signum in STOPPING if outermost else ():
        if signum == signal.SIGINT and signal.getsignal(signum) == signal.SIG_IGN:
            continue
        previous[signum] = signal.signal(signum, _handle)
    unraisable = sys.unraisablehook
    ours = _keep_lost(unraisable) if outermost else None
    _state.depth += 1
    try:
        if ours is not None:
            sys.unraisablehook = ours
        with resurfacing():
            yield
    finally:
        _state.depth -= 1
        for signum, before in previous.items():
            signal.signal(signum, before)
        if ours is not None and sys.unraisablehook is ours:
            sys.unraisablehook = unraisable
        if outermost:
            _state.__init__()  # the next run in this process (tests) starts afresh


def _keep_lost(hook):
    """An unraisable-exception hook that keeps a stop raised inside a callback Python cannot
    raise from (a weak reference's, a finalizer's: "Exception ignored in ...") as ``lost``,
    instead of printing it and going on as if no signal had come."""
    def keep(unraisable):
        if _interrupt_in(unraisable.exc_value) is not None:
            _state.lost = True
        else:
            hook(unraisable)
    return keep


def _interrupt_in(error: BaseException | None) -> Interrupted | None:
    """A signal's ``Interrupted`` in ``error``'s chain: itself, or what caused it, followed
    through chains not cut (``from None``) and not past ganflow's own errors (``Stopped``: a
    stop already handled)."""
    from ganflow.errors import GanflowError

    seen, link = set(), error
    while link is not None and id(link) not in seen and not isinstance(link, GanflowError):
        if isinstance(link, Interrupted):
            return link
        seen.add(id(link))
        link = link.__cause__ or (None if link.__suppress_context__ else link.__context__)
    return None


@contextmanager
def resurfacing():
    """Within the block, an error that carries a signal's ``Interrupted`` leaves it as that
    ``Interrupted`` (``_resurface``): for code that handles a stop (``except
    KeyboardInterrupt``) around calls into TensorFlow or a library that may wrap it."""
    try:
        yield
    except Exception as exc:
        _resurface(exc)
        raise


def _resurface(error: Exception) -> None:
    """Raise ``Interrupted`` if a signal's ``Interrupted`` is in ``error``'s chain. TensorFlow's
    C++ can be running Python (an import inside ``tf.nest``) when the signal's handler raises:
    it then fails in its own way, the ``Interrupted`` only the cause of a ``SystemError``
    ("returned a result with an exception set") that a ``ValueError`` follows. That is the
    stop, and must end the run as one. ganflow's own errors (``Stopped``: a stop already
    handled) and a chain cut with ``from None`` are left as they are."""
    from ganflow.errors import GanflowError

    interrupt = _interrupt_in(error)
    if interrupt is not None:
        raise Interrupted(interrupt.signum) from error
    if _swallowed() and not isinstance(error, GanflowError):
        raise Interrupted(_state.stopping) from error  # C code dropped the stop, then failed


def _swallowed() -> bool:
    """Whether a stop was raised that no code has handled (``name_of``) while it is not what
    is on its way out: an error leaving instead, or the run going on, means C code cleared it
    (a CI run's SIGTERM became TensorFlow's "Could not pack sequence" ValueError, no cause)."""
    return _state.stopping is not None and not _state.caught


@contextmanager
def held(then_raise: bool = True):
    """A section a signal must not cut in half: one that arrives meanwhile interrupts as the
    section ends (``then_raise``), or at the next ``raise_pending``."""
    _state.holding += 1
    try:
        yield
    finally:
        _state.holding -= 1
    if then_raise:
        raise_pending()


def raise_pending() -> None:
    """Interrupt now if a signal arrived during a held section, or its stop was lost."""
    if _state.holding:
        return
    if _state.pending is not None:
        _state.stopping, _state.pending = _state.pending, None
        raise Interrupted(_state.stopping)
    if _swallowed():  # lost in a callback, or cleared by C code, and the run went on
        _state.lost = False
        raise Interrupted(_state.stopping)


def settle() -> None:
    """The run is over (its MLflow run ended): signals from now on are ignored, and one that
    arrived during a held section is dropped."""
    _state.settled, _state.pending, _state.lost = True, None, False


def hurried() -> bool:
    """Whether a signal came after the first: stop without waiting on anything."""
    return _state.again > 0


def name_of(interrupt: KeyboardInterrupt) -> str:
    """``SIGINT``, ``SIGTERM`` or ``SIGHUP``: what stopped the run. The code that handles a
    stop names it: a stop named is not ``lost``, whatever Python printed on the way."""
    _state.caught = True
    return signal.Signals(getattr(interrupt, "signum", signal.SIGINT)).name
