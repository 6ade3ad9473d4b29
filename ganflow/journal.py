"""A run's journal: every call its outbox takes, on disk before training goes on.

Each call (metrics, params, tags, an artifact, an image, a checkpoint) is appended to
``journal.jsonl`` in the run's folder as one JSON line and handed to the operating system at
once, so a process that is killed (SIGKILL, the OOM killer) loses none of them; it is synced
to the disk at most once a second (``SYNC_EVERY``), so a machine that loses power loses at most
that second. ``journal.delivered`` counts the calls the tracking store has taken, in order. The
first line names the run and its store (without credentials).

``replay`` sends what the store has not taken, exactly once: a metric point (key, step) or an
image (key, step) already in the store is not logged again, nor an artifact or a checkpoint
already there. It runs on ``ganflow resume`` (up to the step the run resumes from: what came
after, the resumed run makes again), on the next ``ganflow run`` in the same output folder,
and on ``ganflow sync``. A journal whose writer is alive is locked and left alone. W&B's offline
mode and ``wandb sync`` are the model.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ganflow.errors import first_line

NAME = "journal.jsonl"
DELIVERED = "journal.delivered"
SYNC_EVERY = 1.0  # seconds between fsyncs of the journal, at most


class Journal:
    """The journal of run ``run_id`` in ``folder`` (the run's local folder), written by the
    run's outbox: ``append`` as a call is taken, ``delivered`` as the store takes them."""

    def __init__(self, folder: Path, run_id: str, tracking_uri: str):
        self.path = Path(folder) / NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        # Held while this process writes: replay leaves a live run's journal alone.
        fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if self._file.tell():
            self._file.close()
            raise BlockingIOError(f"{self.path} holds calls not delivered yet: replay it first")
        (self.path.parent / DELIVERED).unlink(missing_ok=True)  # no count of another journal's
        self._write({"journal": 1, "run_id": run_id, "tracking_uri": tracking_uri})
        self._synced = time.monotonic()

    def append(self, item: tuple) -> None:
        self._write(item)
        if time.monotonic() - self._synced >= SYNC_EVERY:
            os.fsync(self._file.fileno())
            self._synced = time.monotonic()

    def delivered(self, count: int) -> None:
        """The first ``count`` calls are in the store."""
        _write_delivered(self.path.parent, count)

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()  # and the lock with it

    def remove(self) -> None:
        """Everything was delivered: the journal goes (unlinked before its lock is let go, so
        no replay can take it meanwhile)."""
        for name in (NAME, DELIVERED):
            (self.path.parent / name).unlink(missing_ok=True)
        self.close()

    def _write(self, entry) -> None:
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()


@dataclass(frozen=True)
class Replayed:
    """What a replay did: calls ``sent``, ``already`` in the store, ``later`` than the step it
    replayed up to (the resumed run makes them again), ``dropped`` (a cut last line, a file
    gone), and why those were dropped."""

    run_id: str
    sent: int = 0
    already: int = 0
    later: int = 0
    dropped: int = 0
    why: tuple[str, ...] = ()

    def line(self) -> str:
        parts = [f"{self.sent} logging calls delivered"]
        if self.already:
            parts.append(f"{self.already} already in the store")
        if self.later:
            parts.append(f"{self.later} from after the checkpoint left to the resumed run")
        if self.dropped:
            parts.append(f"{self.dropped} dropped ({'; '.join(self.why)})")
        return f"Journal of run {self.run_id}: " + ", ".join(parts)


def header(folder: Path) -> dict | None:
    """The journal's first line (run id, tracking URI), or None if there is no journal."""
    try:
        with open(Path(folder) / NAME, encoding="utf-8") as handle:
            return json.loads(handle.readline())
    except (OSError, ValueError):
        return None


def waiting(folder: Path) -> bool:
    """Whether ``folder`` holds a journal with calls not delivered (or a last line that a
    kill cut short, which a replay reports)."""
    path = Path(folder) / NAME
    if not path.exists():
        return False
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    return len(lines) - 2 > _read_delivered(path.parent) or lines[-1] != b""


def replay(folder: Path, run_id: str, client, until_step: int | None = None) -> Replayed | None:
    """Send what the journal in ``folder`` holds and the store lacks, to run ``run_id`` through
    ``client``; stepped calls after ``until_step`` are left out. Then the journal goes. None
    when there is no journal, or its writer is alive."""
    from ganflow.outbox import send, transient

    path = Path(folder) / NAME
    if not path.exists():
        return None
    with open(path, "r+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # its run is still writing it
        if not path.exists() or os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino:
            return None  # delivered and removed, by its run, as this one opened it
        items, why = _parse(handle.read())
        items = items[_read_delivered(path.parent):]
        store = _Store(client, run_id)
        sent = already = later = 0
        for item in items:
            step = _step(item)
            if until_step is not None and step is not None and step > until_step:
                later += 1
                continue
            item = store.missing(item)
            if item is None:
                already += 1
                continue
            problem = _missing_file(item)
            if problem:
                why.append(problem)
                continue
            try:
                send(client, run_id, [item])
            except Exception as exc:  # noqa: BLE001 - the store's errors are many
                if transient(exc):
                    raise  # the store is away: the journal stays, for the next replay
                why.append(f"MLflow refused a {item[0]} call: {first_line(exc)[:200]}")
                continue
            sent += 1
        for name in (NAME, DELIVERED):
            (path.parent / name).unlink(missing_ok=True)
    return Replayed(run_id, sent, already, later, len(why), tuple(why))


def replay_left(output_dir: Path, tracking_uri: str, warn) -> list[Replayed]:
    """Replay every journal in ``output_dir`` (a run's folder each) that was written for
    ``tracking_uri`` and has calls not delivered (a run killed, or cut off from its store);
    ``warn`` is told of those written for another store. The store is opened only if there
    is something to send."""
    import mlflow

    done, client = [], None
    for folder in sorted(Path(output_dir).glob("*")):
        if not waiting(folder):
            continue
        head = header(folder) or {}
        run_id = head.get("run_id", folder.name)
        if head.get("tracking_uri") != tracking_uri:
            warn(f"Run {run_id} left logging calls for {head.get('tracking_uri')} in "
                 f"{folder / NAME}: ganflow sync {run_id} --output-dir {output_dir} sends them")
            continue
        try:
            client = client or mlflow.MlflowClient(tracking_uri)
            replayed = replay(folder, run_id, client)
        except Exception as exc:  # noqa: BLE001 - the store away, the run gone: say, go on
            warn(f"Run {run_id} left logging calls in {folder / NAME} that could not be "
                 f"delivered now ({first_line(exc)[:200]}): ganflow sync {run_id} tries again")
            continue
        if replayed is not None:
            done.append(replayed)
    return done


class _Store:
    """What the store holds of a run, read once per metric key and artifact folder."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id
        self._steps: dict[str, set[int]] = {}
        self._files: dict[str, set[str]] = {}

    def missing(self, item: tuple) -> tuple | None:
        """``item`` without what the store has already (None: it has all of it)."""
        kind = item[0]
        if kind == "metrics":
            points = [p for p in item[1] if p[3] not in self._metric_steps(p[0])]
            return ("metrics", points) if points else None
        if kind == "image":
            _, _, key, step, _ = item
            prefix = f"{key.replace('/', '~')}+step+{step}+"
            return None if any(name.startswith(prefix) and name.endswith(".png")
                               for name in self._names("images")) else item
        if kind == "artifact":
            _, path, artifact_path = item
            return None if Path(path).name in self._names(artifact_path or "") else item
        if kind == "checkpoint":
            from ganflow.checkpoints import IN_MLFLOW, MARKER

            name = Path(item[1]).name
            return None if MARKER in self._names(f"{IN_MLFLOW}/{name}") else item
        return item  # params and tags: the same value again changes nothing

    def _metric_steps(self, key: str) -> set[int]:
        if key not in self._steps:
            self._steps[key] = {m.step for m in self.client.get_metric_history(self.run_id, key)}
        return self._steps[key]

    def _names(self, folder: str) -> set[str]:
        if folder not in self._files:
            self._files[folder] = {f.path.rsplit("/", 1)[-1]
                                   for f in self.client.list_artifacts(self.run_id, folder or None)}
        return self._files[folder]


def _parse(text: str) -> tuple[list[tuple], list[str]]:
    """The calls of a journal's text (after its header), and why lines were dropped: only a
    last line cut short by a kill mid-write can be."""
    lines = text.split("\n")
    cut = lines.pop() if lines else ""  # what follows the last newline: nothing, or a cut line
    items, why = [], []
    for number, line in enumerate(lines[1:], start=2):
        try:
            items.append(tuple(json.loads(line)))
        except ValueError:
            why.append(f"line {number} is not a logging call")
    if cut:
        why.append(f"its last line was cut short ({len(cut)} characters)")
    return items, why


def _step(item: tuple) -> int | None:
    if item[0] == "metrics":
        return max((p[3] for p in item[1]), default=None)
    if item[0] == "image":
        return item[3]
    return None


def _missing_file(item: tuple) -> str | None:
    if item[0] in ("artifact", "image") and not Path(item[1]).exists():
        return f"{item[1]} is gone"
    return None


def _read_delivered(folder: Path) -> int:
    try:
        return int((Path(folder) / DELIVERED).read_text())
    except (OSError, ValueError):
        return 0


def _write_delivered(folder: Path, count: int) -> None:
    staging = Path(folder) / f".{DELIVERED}.tmp"
    staging.write_text(str(count))
    os.replace(staging, Path(folder) / DELIVERED)
