"""MLflow runs: where runs go, one run per ``ganflow run``, reports as finished runs.

The other MLflow jobs have their own modules: ``ganflow.callbacks`` (metrics and pictures
during training), ``ganflow.models`` (the generator as an MLflow model) and
``ganflow.registry`` (versions, their tags and the champion alias).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import mlflow

from ganflow import __version__
from ganflow.config import RunConfig
from ganflow.errors import UsageError


def use_tracking_uri(uri: str | None, must_exist: bool = False) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else MLflow's default; returns the one in use.

    With ``must_exist``, a SQLite store that is not there is an error (reading from it would
    only create an empty one).
    """
    if uri:
        mlflow.set_tracking_uri(uri)
    uri = mlflow.get_tracking_uri()
    if must_exist and uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise UsageError(
            f"no MLflow store at {uri}: run this where you trained, or pass --tracking-uri"
        )
    return uri


@contextmanager
def start_run(config: RunConfig, extra_params: dict, tags: dict, exclude=()):
    """One MLflow run, holding every resolved setting (but ``exclude``) as a param.

    Under ``mlflow run`` (MLFLOW_RUN_ID set) the project's run is continued instead.
    """
    if not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(config.experiment)
    run_name = f"{config.recipe}-{config.dataset.replace(':', '-').replace('/', '-')}"
    with mlflow.start_run(run_name=run_name) as run:
        params = {k: v for k, v in config.params().items() if k not in exclude}
        mlflow.log_params({**params, **extra_params})
        mlflow.set_tags({"ganflow.version": __version__, **tags})
        yield run


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
