"""MLflow runs: where runs go, one run per ``ganflow run``, reports as finished runs.

The other MLflow jobs have their own modules: ``ganflow.callbacks`` (metrics and pictures
during training), ``ganflow.models`` (the generator as an MLflow model) and
``ganflow.registry`` (versions, their tags and the champion alias).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import mlflow

from ganflow import __version__, signals
from ganflow.config import RunConfig
from ganflow.errors import TrackingServerError, UsageError, first_line


def use_tracking_uri(uri: str | None, must_exist: bool = False) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else MLflow's default; returns the one in use.

    With ``must_exist``, a SQLite store that is not there is an error (reading from it would
    only create an empty one).
    """
    from ganflow.net import credentials_to_environment

    explicit = uri
    uri = credentials_to_environment(uri or mlflow.get_tracking_uri())  # never printed or logged
    if explicit or uri != mlflow.get_tracking_uri():
        mlflow.set_tracking_uri(uri)
    if must_exist and uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise UsageError(
            f"no MLflow store at {uri}: run this where you trained, or pass --tracking-uri"
        )
    check_store(uri)
    if must_exist:
        ensure_store(uri)
    return uri


# What MLflow 3.17 can store runs and models in ("" is a local path).
SCHEMES = ("", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks",
           "databricks-uc", "uc")


HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


# Where a database URI's driver is not installed: what to install (SQLAlchemy's module name).
DRIVERS = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient",
           "pymysql": "pymysql", "pyodbc": "pyodbc"}
START_TIMEOUT = 60.0  # seconds a tracking server that accepts connections may take to answer


def _stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


def check_store(uri: str, say=_stderr) -> None:
    """The store answers, within a minute, or a one-line error says why: an unknown scheme, a
    folder (MLflow's retired file store), a SQLite URI with two slashes or a file that cannot
    be made or written, a database without its driver, a server that does not answer, that is
    not MLflow or does not speak the URI's protocol. ``say`` is told, within seconds, what a
    slow server keeps the run waiting for."""
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    scheme = parsed.scheme if len(parsed.scheme) > 1 else ""  # C:\ is a path
    if scheme not in SCHEMES:
        raise UsageError(f"tracking URI {uri}: MLflow cannot store runs at a {scheme}:// URI; "
                         "use a path, sqlite:///FILE or http://HOST:PORT")
    if scheme in ("", "file") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
        raise UsageError(f"tracking URI {uri}: MLflow 3.17 keeps no new runs in a folder (its "
                         "file store is retired): use sqlite:///mlflow.db (mlflow "
                         "migrate-filestore moves old runs there), or set "
                         "MLFLOW_ALLOW_FILE_STORE=true")
    if scheme in ("http", "https"):
        _check_server(uri, parsed, say)
    if scheme == "sqlite":
        if not uri.startswith("sqlite:///"):
            raise UsageError(f"tracking URI {uri}: a SQLite URI has three slashes before a "
                             "relative path and four before an absolute one, e.g. "
                             f"sqlite:///{parsed.netloc or 'mlflow.db'}{parsed.path}")
        database = Path(uri[len("sqlite:///"):])
        if not database.exists():  # made when the run starts: its folder must allow it
            check_writable(database.parent, f"tracking URI {uri}:")
        elif database.is_dir() or not os.access(database, os.R_OK | os.W_OK):
            raise UsageError(f"tracking URI {uri}: {database} cannot be "
                             f"{'used' if database.is_dir() else 'written'} as a store (it is "
                             f"{'a folder' if database.is_dir() else 'not writable'}): point "
                             "--tracking-uri at another file")
    if scheme in ("postgresql", "mysql", "mssql"):
        _check_driver(uri)


def _shown(uri: str) -> str:
    """``uri`` without a password, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def _check_driver(uri: str) -> None:
    from sqlalchemy.engine import make_url

    try:
        make_url(uri).get_dialect().import_dbapi()
    except ModuleNotFoundError as exc:
        package = DRIVERS.get(exc.name, exc.name)
        raise UsageError(f"tracking URI {_shown(uri)}: its database driver is not installed "
                         f"(no module {exc.name}): pip install '{package}'") from None
    except Exception as exc:  # noqa: BLE001 - an unknown dialect, a malformed URL
        raise UsageError(f"tracking URI {_shown(uri)}: {first_line(exc)}") from None


def _check_server(uri: str, parsed, say) -> None:
    """An MLflow tracking server answers at ``uri``: ``/health`` says OK (or its REST API
    answers), within ``START_TIMEOUT``."""
    import time

    import requests

    from ganflow.net import reachable
    from ganflow.outbox import TrackingUnavailable

    # MLflow retries a failed request 7 times, 2**n seconds apart (about 4 minutes) before
    # it says so; ganflow's outbox retries itself, and says so at once.
    for name, value in HTTP_RETRIES.items():
        os.environ.setdefault(name, value)
    # urllib3 warns of each retried request; the outbox says it once.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:
        raise UsageError(f"tracking URI {uri}: the port {parsed.netloc.rsplit(':', 1)[-1]!r} is "
                         "not a number, e.g. http://127.0.0.1:5000") from None
    if not reachable(parsed.hostname or "", port, timeout=5.0):
        raise TrackingUnavailable(f"tracking server {uri} does not answer: start it (mlflow "
                                  "server --host 127.0.0.1 --port PORT) or check --tracking-uri")
    base = uri.rstrip("/")
    # TLS as MLflow's own client makes it: its certificate settings, its insecure switch.
    tls = {"verify": os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or
           os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() != "true",
           "cert": os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH") or None}
    started, said = time.monotonic(), False
    while True:
        try:
            answer = requests.get(f"{base}/health", timeout=5.0, **tls)
            break
        except requests.exceptions.SSLError as exc:
            reason = _ssl_reason(exc)
            if reason == "wrong version number":
                raise TrackingServerError(
                    f"tracking URI {uri}: the server at {parsed.netloc} does not speak HTTPS "
                    f"({reason}): use http://{parsed.netloc}") from None
            raise TrackingServerError(
                f"tracking URI {uri}: TLS with {parsed.netloc} failed ({reason}): give its CA "
                "certificate in MLFLOW_TRACKING_SERVER_CERT_PATH, or set "
                "MLFLOW_TRACKING_INSECURE_TLS=true to skip the check") from None
        except (requests.exceptions.Timeout, requests.exceptions.ConnectionError):
            if not said:
                say(f"Waiting for the tracking server at {uri}: it accepts connections but "
                    f"has not answered yet (giving up after {START_TIMEOUT:.0f} s)")
                said = True
            if time.monotonic() - started > START_TIMEOUT:
                raise TrackingUnavailable(
                    f"tracking server {uri} accepts connections but did not answer in "
                    f"{START_TIMEOUT:.0f} s: is it an MLflow server, and is it stuck? Check it "
                    f"(curl {base}/health says OK) or --tracking-uri") from None
            time.sleep(1.0)
    if answer.status_code == 200 and answer.text.strip() == "OK":
        return
    try:
        api = requests.get(f"{base}/api/2.0/mlflow/experiments/search",
                           params={"max_results": 1}, timeout=10.0, **tls)
    except requests.exceptions.RequestException as exc:
        raise TrackingUnavailable(f"tracking server {uri} stopped answering: "
                                  f"{first_line(exc)[:200]}") from None
    if api.status_code not in (200, 401, 403):  # 401/403: MLflow's own authentication
        raise TrackingServerError(
            f"tracking URI {uri}: the server there is not an MLflow tracking server (/health "
            f"answered {answer.status_code}, its REST API {api.status_code}): check the port, "
            "or start one: mlflow server --host 127.0.0.1 --port PORT")


def _ssl_reason(exc: BaseException) -> str:
    import re

    found = re.search(r"\[SSL: ([A-Z_]+)\]", str(exc))
    return found.group(1).lower().replace("_", " ") if found else "no TLS handshake"


def ensure_store(uri: str) -> None:
    """Create (or migrate) a SQLite store once, under a lock: MLflow's own creation is not
    safe when several processes start on a new store at once (two of three crash in its
    schema migration, "duplicate column name: step")."""
    if not uri.startswith("sqlite:///"):
        return
    import fcntl
    import hashlib
    import tempfile

    path = Path(uri[len("sqlite:///"):]).resolve()
    key = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"ganflow-store-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
        except Exception as exc:  # sqlalchemy's errors: a folder that cannot be written
            reason = first_line(exc)
            raise UsageError(f"tracking URI {uri}: cannot open the store ({reason})") from None
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def start_run(config: RunConfig, extra_params: dict, tags: dict, resume_run_id: str | None = None,
              at: int = 0, exclude=()):
    """One MLflow run, holding every resolved setting (but ``exclude``) as a param, the
    resolved settings as JSON (tag ``ganflow.config``, what ``ganflow resume`` reads, and
    ``ganflow.origins``, which layer set each) and the process that runs it (``ganflow.host``,
    ``ganflow.pid``).

    Under ``mlflow run`` (MLFLOW_RUN_ID set) the project's run is continued instead. With
    ``resume_run_id`` that run is continued: its params stay as they were. Runs of this host
    left RUNNING by a process that is gone (SIGKILL, a crash) are marked KILLED first.
    """
    ensure_store(mlflow.get_tracking_uri())
    if not os.environ.get("MLFLOW_RUN_ID") and not resume_run_id:
        mlflow.set_experiment(config.experiment)
    mark_abandoned_runs()
    if resume_run_id:
        # This process's tags first: another process must not take the reopened run for
        # the dead one's. The settings as resumed (epochs, rates) are what a next resume uses.
        for key, value in process_tags().items():
            mlflow.MlflowClient().set_tag(resume_run_id, key, value)
    # A stop while the run is made is held until it is: then the run ends KILLED at step
    # ``at`` (where ganflow resume starts it), not FAILED as MLflow would end it.
    with signals.held(then_raise=False):
        try:
            if resume_run_id:
                active = mlflow.start_run(run_id=resume_run_id)
                mlflow.set_tags({**process_tags(), **config_tags(config), **tags})
            else:
                run_name = f"{config.recipe}-{config.dataset.replace(':', '-').replace('/', '-')}"
                active = mlflow.start_run(run_name=run_name)
                params = {k: v for k, v in config.params().items() if k not in exclude}
                mlflow.log_params({**params, **extra_params})
                mlflow.set_tags({"ganflow.version": __version__, **config_tags(config),
                                 **process_tags(), **tags})
        except BaseException:
            if mlflow.active_run() is not None:  # made, then refused its params or tags
                mlflow.end_run(status="FAILED")
            raise
    with active as run:
        try:
            signals.raise_pending()
        except KeyboardInterrupt as exc:
            raise stopped_at_start(run.info.run_id, exc, at) from None
        yield run


DATASET_ATTEMPTS = 3  # recording the run's dataset, when runs started together race


def log_dataset(config: RunConfig, source) -> None:
    """What the run trains on, as MLflow's dataset record of the active run (the run page's
    Datasets section): its name, where it is, a digest, the examples' schema, and the
    share of it used (``--data-fraction``)."""
    import hashlib
    import json

    import numpy as np
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import get_registered_sources
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types.schema import Schema, TensorSpec

    name, _, argument = config.dataset.partition(":")
    if name in ("prepared", "folder"):
        # MLflow 3.17 registers its local-files source twice, and resolving a path by it
        # warns that the path "can be interpreted in multiple ways": take the class itself.
        local = next(s for s in get_registered_sources()
                     if s.__name__ == "LocalArtifactDatasetSource")
        where = local(Path(argument).expanduser().resolve().as_uri())
    else:
        where = CodeDatasetSource({"dataset": config.dataset})
    specs = [TensorSpec(np.dtype("float32"), (-1, *source.spec.shape), "example")]
    if source.labelled:
        specs.append(TensorSpec(np.dtype("int64"), (-1,), "label"))
    digest = source.info.get("digest") or hashlib.sha256(json.dumps(
        [config.dataset, config.image_size, list(source.spec.shape), source.spec.size,
         config.data_fraction]).encode()).hexdigest()[:16]
    dataset = MetaDataset(where, name=config.dataset, digest=digest, schema=Schema(specs))
    tags = {"fraction": str(config.data_fraction or 1.0), "examples": str(source.spec.size)}
    for attempt in range(DATASET_ATTEMPTS):
        try:
            mlflow.log_input(dataset, context="training", tags=tags)
            return
        except mlflow.exceptions.MlflowException:
            # Runs started together on one store record the same dataset at once: the first
            # insert wins and the others break the store's uniqueness (an IntegrityError, a
            # 400 from a server; seen with four runs on one server). The dataset is then
            # there, and recording it again links it to the run.
            if attempt == DATASET_ATTEMPTS - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def end_run(status: str) -> None:
    """End the active MLflow run as ``status``; the run is over, so later signals change
    nothing (``signals.settle``), even if the store did not take the status."""
    try:
        mlflow.end_run(status=status)  # it leaves MLflow's stack of runs even if this fails
    finally:
        signals.settle()


def end_stopped(signal_name: str, step: int) -> None:
    """End the active run as stopped by ``signal_name`` at ``step``: tagged, KILLED. A store
    that does not answer leaves it RUNNING, which the next ganflow command marks KILLED."""
    try:
        mlflow.set_tags({"ganflow.interrupted": signal_name, "ganflow.stopped_at_step": str(step)})
    except mlflow.exceptions.MlflowException:
        pass
    try:
        end_run("KILLED")
    except mlflow.exceptions.MlflowException:
        print("The tracking store did not answer: the run stays RUNNING until the next ganflow "
              "command on this machine marks it KILLED", file=sys.stderr, flush=True)


def stopped_at_start(run_id: str, interrupt: KeyboardInterrupt, at: int):
    """The error of a run stopped after its MLflow run opened, before its first step (``at``):
    the run ends KILLED, and ``ganflow resume`` starts it there."""
    from ganflow.errors import Stopped

    name = signals.name_of(interrupt)
    end_stopped(name, at)
    return Stopped(f"stopped by {name} before its first step: run {run_id} is marked KILLED; "
                   f"ganflow resume {run_id} starts it from step {at}")


SAMPLES = "samples"  # the MLflow image key of the sample pictures
ORIGINS_TAG = "ganflow.origins"  # which layer set each setting (RunConfig.origins), as JSON


def config_tags(config: RunConfig) -> dict[str, str]:
    """The settings as ``ganflow resume`` rebuilds them: their values, and their layers."""
    import json

    return {"ganflow.config": config.to_json(), ORIGINS_TAG: json.dumps(dict(config.origins))}


def process_tags() -> dict[str, str]:
    return {"ganflow.host": socket.gethostname(), "ganflow.pid": str(os.getpid())}


def process_alive(tags: dict) -> bool:
    """Whether the process a run's tags name still runs (unknown: assumed alive)."""
    if tags.get("ganflow.host") != socket.gethostname() or not tags.get("ganflow.pid"):
        return True
    try:
        os.kill(int(tags["ganflow.pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def mark_abandoned_runs() -> list[str]:
    """Mark KILLED the RUNNING ganflow runs of this host whose process is gone; returns them."""
    client = mlflow.MlflowClient()
    try:
        experiments = [e.experiment_id for e in client.search_experiments()]
        running = client.search_runs(experiments, "attributes.status = 'RUNNING'") \
            if experiments else []
    except mlflow.exceptions.MlflowException:
        return []
    gone = []
    for run in running:
        tags = run.data.tags
        if "ganflow.pid" in tags and not process_alive(tags):
            client.set_tag(run.info.run_id, "ganflow.abandoned",
                           f"process {tags['ganflow.pid']} ended without closing the run")
            client.set_terminated(run.info.run_id, status="KILLED")
            gone.append(run.info.run_id)
    return gone


def last_metrics(run_id: str) -> dict[str, float]:
    """A run's last value of each metric but the epochs' means: what its last training step
    and evaluation left, for a resumed run with nothing left to train."""
    metrics = mlflow.MlflowClient().get_run(run_id).data.metrics
    return {k: v for k, v in metrics.items() if not k.startswith("epoch/")}


def last_logged_step(run_id: str) -> int:
    """The last step a run logged ``d_loss`` or a sample picture at (-1 if none): a resumed
    run logs nothing at or before it again, so no step appears twice (the picture at step 0
    of a run stopped before its first step included)."""
    client = mlflow.MlflowClient()
    steps = [m.step for m in client.get_metric_history(run_id, "d_loss")]
    steps += [int(name.split("+")[2]) for name in
              (f.path.rsplit("/", 1)[-1] for f in client.list_artifacts(run_id, "images"))
              if name.startswith(f"{SAMPLES}+step+") and name.endswith(".png")]
    return max(steps, default=-1)


def check_writable(folder: Path, option: str) -> None:
    """``folder`` is a folder that can be written in, or can be made where its nearest
    existing parent can be written in (nothing is created)."""
    folder = Path(folder).expanduser()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{option} {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {folder}: {existing} is not writable")


def log_report(experiment: str, run_name: str, params: dict, metrics: dict, files) -> str:
    """One finished MLflow run holding a report: params, metrics and files; returns its id."""
    if not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        mlflow.set_tags({"ganflow.version": __version__})
        for path in files:
            mlflow.log_artifact(str(path))
    return run.info.run_id
