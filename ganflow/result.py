"""What ``ganflow run`` and ``ganflow resume`` report: ``RunResult``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunResult:
    """A run that ended (finished, or stopped with a checkpoint): where its MLflow run, its
    pictures, model and newest checkpoint are. A worker of ``--strategy multiworker`` that is
    not the chief has only trained: ``worker`` says which it was, and it has no run of its
    own."""

    run_id: str
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    experiment: str = ""
    experiment_id: str = ""
    tracking_uri: str = ""
    samples_path: Path | None = None
    registered: Any = None  # a registry.Registered: the model URI, name, version, champion
    interrupted: bool = False
    steps_done: int | None = None  # training steps done, when it trained
    checkpoint: Path | None = None  # the newest checkpoint
    worker: Any = None  # a devices.Worker that is not the chief

    @classmethod
    def of(cls, active, tracking_uri: str, **fields) -> RunResult:
        """The result of the MLflow run ``active`` (an ``mlflow.ActiveRun``, ended)."""
        import mlflow

        return cls(run_id=active.info.run_id, experiment_id=active.info.experiment_id,
                   experiment=mlflow.get_experiment(active.info.experiment_id).name,
                   tracking_uri=tracking_uri, **fields)

    @property
    def model_uri(self) -> str:
        return self.registered.model_uri if self.registered else ""

    @property
    def model_name(self) -> str | None:
        return self.registered.name if self.registered else None

    @property
    def model_version(self) -> int | None:
        return self.registered.version if self.registered else None

    @property
    def champion(self):
        return self.registered.champion if self.registered else None
