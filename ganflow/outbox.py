"""What a run sends to MLflow while it trains, sent without making training wait.

Training puts metrics, tags and artifacts into an ``Outbox``; one background thread sends them,
in order, through ``MlflowClient``. When the tracking server cannot be reached, the thread keeps
them and tries again every few seconds, a line on stderr says so (and another when the server
is back), and training goes on. ``down_for()`` tells how long the server has been away: the
run stops with a checkpoint when that passes its ``--tracking-timeout``. Every call is also
written to the run's journal (``ganflow.journal``) as it is taken, so what was not delivered
when the process ends, however it ends, is delivered later (``ganflow resume``, the next
``ganflow run`` in the same folder, ``ganflow sync``).

MLflow's own asynchronous logging (``synchronous=False``) is not used: a batch whose request
fails after its HTTP retries is dropped with an error line (``AsyncLoggingQueue._log_run_data``),
and artifacts logged that way have no retry either.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunTag

from ganflow.errors import GanflowError, first_line

# MLflow error codes that mean "try again later" (a server that is down or overloaded); other
# codes are answers (a bad value, a missing run), and retrying would not change them.
TRANSIENT_CODES = ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED",
                   "DEADLINE_EXCEEDED", "ABORTED", "UNAVAILABLE")
BATCH_LIMIT = 1000  # metrics per log_batch request (MLflow's limit)


class TrackingUnavailable(GanflowError):
    """The tracking server stayed away past the run's timeout; the run stopped with a
    checkpoint, to be resumed when the server is back."""

    exit_code = 75  # EX_TEMPFAIL: try again later


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` says the store could not be reached (rather than refused the call)."""
    if isinstance(exc, mlflow.exceptions.MlflowException):
        return exc.error_code in TRANSIENT_CODES
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError,
                        PermissionError)):
        return False  # a file that is not there will not come
    return isinstance(exc, OSError)  # a connection, a timeout, a full disk: may pass


def _stderr(line: str) -> None:
    print(f"\n{line}", file=sys.stderr, flush=True)


class Outbox:
    """Metrics, tags and artifacts of run ``run_id``, delivered in order by a background
    thread that retries while the store cannot be reached (``retry_every`` seconds apart)."""

    def __init__(self, run_id: str, client: mlflow.MlflowClient | None = None,
                 warn=_stderr, retry_every: float = 2.0, linger: float = 1.0, journal=None):
        self.run_id = run_id
        self.journal = journal  # a ganflow.journal.Journal: every call on disk first
        self.client = client or mlflow.MlflowClient()
        self.warn = warn
        self.retry_every = retry_every
        # Metric windows arrive every few steps: waiting up to ``linger`` seconds after the
        # first sends those that follow in the same request (one SQLite transaction or HTTP
        # call instead of several, less CPU taken from training). flush() and close() do
        # not wait for it.
        self.linger = linger
        self.requests = 0  # calls made to the store, retries included
        self._hurry = False
        self._first_waiting = 0.0  # when the oldest waiting call arrived (time.monotonic)
        self.delivered = 0
        self._done = 0  # calls delivered or refused: the journal's count
        self._abandoned = False  # closed while a call was under way: the journal is let go
        self._items: deque[tuple] = deque()
        self._lock = threading.Condition()
        self._down_since: float | None = None
        self._sending = False
        self._stop = False
        self._thread = threading.Thread(target=self._work, name="ganflow-outbox", daemon=True)
        self._thread.start()

    # What training calls: each returns at once.
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        stamp = int(time.time() * 1000)
        self._put(("metrics", [(k, float(v), stamp, int(step)) for k, v in metrics.items()]))

    def log_params(self, params: dict[str, str]) -> None:
        self._put(("params", {k: str(v) for k, v in params.items()}))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._put(("tags", {k: str(v) for k, v in tags.items()}))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._put(("artifact", str(path), artifact_path))

    def log_image(self, path: str | Path, key: str, step: int) -> None:
        """A picture as MLflow's image at ``step`` (the UI's image slider beside the charts)."""
        self._put(("image", str(path), key, int(step), int(time.time() * 1000)))

    def log_checkpoint(self, folder: str | Path, keep: int) -> None:
        """Upload a checkpoint's ``folder`` (its files and the ``COMPLETE`` marker, last) as
        artifacts ``checkpoints/<folder name>``, delete all but the newest ``keep`` there, then
        the folder."""
        self._put(("checkpoint", str(folder), int(keep)))

    def _put(self, item: tuple) -> None:
        with self._lock:
            if self.journal is not None:
                self.journal.append(item)
            if not self._items:
                self._first_waiting = time.monotonic()
            self._items.append(item)
            self._lock.notify_all()

    # The state of the line to the store.
    def down_for(self) -> float:
        """Seconds since the store stopped answering (0 while it answers)."""
        since = self._down_since
        return 0.0 if since is None else time.monotonic() - since

    @property
    def waiting(self) -> int:
        """Calls not delivered yet."""
        with self._lock:
            return len(self._items)

    def flush(self, timeout: float, give_up=lambda: False) -> bool:
        """Wait until everything is delivered; False if the store has been away for more than
        ``timeout`` seconds first, or ``give_up()`` says so (what is waiting stays waiting)."""
        with self._lock:
            self._hurry = True
            self._lock.notify_all()
            try:
                while self._items or self._sending:
                    if self.down_for() > timeout or give_up() or not self._thread.is_alive():
                        return False
                    self._lock.wait(0.2)
            finally:
                self._hurry = False
        return True

    def close(self, timeout: float = 120.0) -> list[tuple]:
        """Stop the thread (after the call it is sending, if any, waiting for it at most
        ``timeout`` seconds); returns what was not delivered, which stays in the journal
        (which goes when everything was delivered)."""
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        self._thread.join(timeout=timeout)
        with self._lock:
            left = list(self._items)
            self._abandoned = True  # a call still under way no longer counts in the journal
            if self.journal is not None:
                sending = self._sending or self._thread.is_alive()
                self.journal.close() if left or sending else self.journal.remove()
            return left

    # The thread.
    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._items and not self._stop:
                    self._lock.wait()
                if self._stop and (not self._items or self._down_since is not None):
                    return
                if self._items[0][0] == "metrics" and not (self._stop or self._hurry):
                    wait = self._first_waiting + self.linger - time.monotonic()
                    if wait > 0:
                        self._lock.wait(wait)
                        continue
                batch = _next_batch(self._items)
                self._sending = True
            try:
                self.requests += 1
                send(self.client, self.run_id, batch)
            except Exception as exc:  # noqa: BLE001 - the store's errors are many
                with self._lock:
                    self._sending = False
                    if transient(exc):
                        if self._down_since is None:
                            self._down_since = time.monotonic()
                            self.warn(f"Tracking store unreachable ({_reason(exc)}): training "
                                      f"goes on; {len(self._items)} logging calls kept to send "
                                      "when it is back")
                        deadline = time.monotonic() + self.retry_every
                        while not self._stop and time.monotonic() < deadline:
                            self._lock.wait(deadline - time.monotonic())
                        continue
                    for _ in batch:
                        self._items.popleft()
                    self._count_done(len(batch))
                    self.warn(f"MLflow refused a logging call, skipped: {_reason(exc)}")
                    self._lock.notify_all()
                continue
            with self._lock:
                for _ in batch:
                    self._items.popleft()
                if self._items:
                    self._first_waiting = time.monotonic()
                self.delivered += len(batch)
                self._count_done(len(batch))
                self._sending = False
                if self._down_since is not None:
                    self.warn(f"Tracking store back after {self.down_for():.0f} s: sending the "
                              f"{len(self._items) + len(batch)} logging calls kept")
                    self._down_since = None
                self._lock.notify_all()


    def _count_done(self, count: int) -> None:
        """(Under the lock.) ``count`` more calls are done with; the journal says so."""
        self._done += count
        if self.journal is None or self._abandoned:
            return
        try:
            self.journal.delivered(self._done)
        except OSError as exc:  # a full disk: the calls went, the count did not
            self.warn(f"Cannot update the journal's count ({exc.strerror}): a later replay "
                      "checks the store for what it has")
            self.journal = None


def _next_batch(items: deque) -> list[tuple]:
    """The first waiting call, with the metric calls right after it when it is one (up to
    one request's worth)."""
    batch = [items[0]]
    if items[0][0] == "metrics":
        count = len(items[0][1])
        for item in list(items)[1:]:
            if item[0] != "metrics" or count + len(item[1]) > BATCH_LIMIT:
                break
            batch.append(item)
            count += len(item[1])
    return batch


def send(client: mlflow.MlflowClient, run_id: str, batch: list[tuple]) -> None:
    """Make the MLflow calls of ``batch`` (calls of one kind, as the outbox takes them)."""
    kind = batch[0][0]
    if kind == "metrics":
        metrics = [Metric(key, value, stamp, step)
                   for item in batch for key, value, stamp, step in item[1]]
        client.log_batch(run_id, metrics=metrics, synchronous=True)
    elif kind == "params":
        client.log_batch(run_id, params=[Param(k, v) for k, v in batch[0][1].items()],
                         synchronous=True)
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in batch[0][1].items()],
                         synchronous=True)
    elif kind == "artifact":
        client.log_artifact(run_id, batch[0][1], batch[0][2])
    elif kind == "image":
        from PIL import Image

        _, path, key, step, stamp = batch[0]
        try:
            with Image.open(path) as picture:
                picture.load()
        except (OSError, SyntaxError) as exc:  # a picture that cannot be read: not the store's
            raise ValueError(f"cannot read {path}: {exc}") from None
        client.log_image(run_id, picture, key=key, step=step, timestamp=stamp,
                         synchronous=True)  # loaded whole above
    elif kind == "checkpoint":
        from ganflow.checkpoints import upload

        upload(client, run_id, Path(batch[0][1]), batch[0][2])
    else:
        raise ValueError(f"unknown outbox call {kind!r}")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    if "Max retries exceeded" in text or "Connection refused" in text:
        return "connection refused"
    return first_line(exc)[:200]


def retry(call, what: str, outbox: Outbox, timeout: float):
    """``call()`` in this thread, tried again while the store cannot be reached, for at most
    ``timeout`` seconds of it being away; then ``TrackingUnavailable`` (``what`` names the
    call). For the calls that end a run (logging the model, registering it), which need the
    store before the run can finish."""
    started = None
    while True:
        try:
            result = call()
            if started is not None:
                outbox.warn(f"Tracking store back after {time.monotonic() - started:.0f} s")
            return result
        except Exception as exc:
            if not transient(exc):
                raise
            if started is None:
                started = time.monotonic()
                outbox.warn(f"Tracking store unreachable while {what} ({_reason(exc)}): trying "
                            f"again for up to {timeout:.0f} s")
            if time.monotonic() - started > timeout:
                raise TrackingUnavailable(
                    f"the tracking store did not answer for {timeout:.0f} s while {what}"
                ) from exc
            time.sleep(outbox.retry_every)
