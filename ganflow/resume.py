"""``ganflow resume RUN_ID``: the settings a run was started with, one process at a time per
run, and its newest checkpoint loaded back into a prepared model."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ganflow.config import CHOICES, RECIPE, RunConfig, resolve
from ganflow.errors import UsageError


def resume_config(run_id: str, changes: dict[str, Any]) -> RunConfig:
    """The settings ``run_id`` was started with, each from the layer that set it then, with
    ``changes`` (None: unchanged) on top. A run that finished needs more ``epochs``; one whose
    process still runs cannot be resumed."""
    import mlflow

    from ganflow import tracking
    from ganflow.devices import worker

    try:
        run = mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise UsageError(f"no run {run_id} in {mlflow.get_tracking_uri()}: pass the run id "
                         "ganflow run printed, and its --tracking-uri") from None
    text = run.data.tags.get("ganflow.config")
    if not text:
        raise UsageError(f"run {run_id} was not made by `ganflow run` (it has no ganflow.config "
                         "tag): it cannot be resumed")
    values = json.loads(text)
    role = worker(values.get("strategy", "default"))
    chief = role is None or role.chief  # a worker resumes with its chief, which reopens the run
    if chief and run.info.status == "RUNNING" and tracking.process_alive(run.data.tags):
        raise UsageError(f"run {run_id} is still running (process {run.data.tags.get('ganflow.pid')}"
                         f" on {run.data.tags.get('ganflow.host')}): stop it first")
    # It computes as it did: `--precision auto` stays the policy it picked when the run
    # started (param dtype_policy), though this machine, or a worker, might pick another.
    policy = run.data.params.get("dtype_policy")
    if values.get("precision") == "auto" and policy in CHOICES["precision"]:
        values["precision"] = policy
    before = values["epochs"]
    changed = {k: v for k, v in changes.items() if v is not None}
    if run.info.status == "FINISHED" and changed.get("epochs", before) <= before:
        raise UsageError(f"run {run_id} finished its {before} epochs: to train it longer, pass "
                         f"--epochs N with N > {before}")
    origins = json.loads(run.data.tags.get(tracking.ORIGINS_TAG, "{}"))
    if tracking.ORIGINS_TAG not in run.data.tags and "eval_features" not in run.data.params:
        # A run from before origins were kept: it evaluated only if the user asked.
        origins["eval_every"] = RECIPE + values.get("recipe", "")
    layers: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        layers.setdefault(origins.get(key, f"run {run_id}"), {})[key] = value
    return resolve(*layers.items(), ("ganflow resume", changed))


@contextmanager
def hold(output_dir: str, run_id: str | None):
    """An exclusive lock on ``run_id``'s folder while the block runs (nothing for a new run):
    two ``ganflow resume`` of one run would train from one checkpoint folder and log the same
    steps twice."""
    if run_id is None:
        yield
        return
    import fcntl

    path = Path(output_dir) / run_id / ".resume.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"run {run_id} is being resumed by another process already: wait "
                             "for it to finish, or stop it first") from None
        yield


@dataclass(frozen=True)
class Restored:
    """A run's newest checkpoint, loaded: where it is, and how far the run had got."""

    store: Any  # the run's checkpoints.Checkpoints
    done: int  # training steps done


def restore(prepared, run_id: str) -> Restored:
    """Load ``run_id``'s newest checkpoint into ``prepared.gan``, from the run's folder, else
    from its MLflow artifacts (``--checkpoint-to-mlflow``); a run stopped before its first
    step has none and starts from step 0. A restored optimizer's constant
    rate is the checkpoint's: it is set to this run's, which ``ganflow resume --lr-g/--lr-d``
    may have changed (schedules are objects, not restored)."""
    from ganflow import checkpoints

    import mlflow

    config, gan = prepared.config, prepared.gan
    folder = Path(config.output_dir) / run_id / "checkpoints"
    stopped_before_training = not checkpoints.saved_in(folder) and \
        not checkpoints.fetch(run_id, folder) and \
        mlflow.get_run(run_id).data.tags.get("ganflow.stopped_at_step") == "0"
    store = checkpoints.Checkpoints(gan, folder, config.keep_checkpoints)
    if stopped_before_training:  # it starts as it would have, from the seed's weights
        return Restored(store, 0)
    done = store.restore()
    if prepared.resolved.components["lr_schedule"].name == "constant":
        gan.g_optimizer.learning_rate = config.lr_g
        gan.d_optimizer.learning_rate = config.lr_d
    return Restored(store, done)
