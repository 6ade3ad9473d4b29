"""Checkpoints: everything the next training step depends on, saved so a run can go on.

A checkpoint holds both networks (BatchNorm statistics included), the EMA copy, both
optimizers' state (moments, iteration counts, learning rates), the noise generators' states
(G's noise, the plugins' randomness), the plugins' own state (``GAN.plugin_state``: ADA's p)
and the count of training steps done. The data's position
needs no saving: the pipeline is a fixed, seeded stream, and a resumed run skips the batches
already used. With ``tf.train.CheckpointManager`` the last ``keep`` are kept; TensorFlow
writes each one under a temporary name and renames it when complete, so a kill while writing
leaves the previous checkpoint usable. A checkpoint that cannot be read is skipped, with a
warning, for the one before it.

Keras's ``BackupAndRestore`` is not used: it restores the epoch but not the step within it,
builds only ``model.optimizer`` and does not save ``SeedGenerator`` state.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ganflow import __version__, signals
from ganflow.errors import GanflowError, UsageError, first_line

PROGRESS = "progress.json"
MARKER = "COMPLETE"  # the last file of a checkpoint logged to MLflow: it arrived whole
IN_MLFLOW = "checkpoints"  # the artifact folder of a run's checkpoints


class CheckpointWriteError(GanflowError):
    """A checkpoint could not be written; the run stops, its earlier checkpoints intact."""

    exit_code = 1


def _reason(exc: BaseException) -> str:
    """What an OS or TensorFlow I/O error says, without TensorFlow's op context."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    import re

    text = getattr(exc, "message", None) or first_line(exc)
    text = re.sub(r"\s*\[Op:\w+\]$", "", text.strip())  # the op that failed, e.g. [Op:SaveV2]
    return text.split(";")[-1].strip()


class Checkpoints:
    """The checkpoints of one run's ``gan`` (a ``ganflow.GAN``), in ``directory``."""

    def __init__(self, gan, directory: str | Path, keep: int = 3, on_save=None):
        self.gan = gan
        self.directory = Path(directory)
        self.keep = keep
        self.on_save = on_save  # called with each new checkpoint's path
        items = {
            "generator": gan.generator,
            "discriminator": gan.discriminator,
            "d_optimizer": gan.d_optimizer,
            "g_optimizer": gan.g_optimizer,
            "noise": gan.seed_generator.state,
            "plugin_noise": gan.plugin_seed_generator.state,
            "steps_done": gan.steps_done,
            # The epoch's running metrics, so a run resumed mid-epoch continues its means.
            "metrics": [v for tracker in gan.metrics for v in (tracker.total, tracker.count)],
        }
        if gan.ema_generator is not None:
            items["ema_generator"] = gan.ema_generator
        if gan.plugin_state:  # what plugins keep across steps (ADA's p)
            items["plugin_state"] = gan.plugin_state
        self.checkpoint = tf.train.Checkpoint(**items)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.directory),
                                                  max_to_keep=keep)
        self.restored_metrics: dict[str, tuple[float, float]] = {}

    @property
    def steps_done(self) -> int:
        return int(self.gan.steps_done.numpy())

    def weights_are_finite(self) -> bool:
        """Whether the networks, the EMA copy and the optimizers hold only finite numbers (a
        plugin's metric that is not finite does not stop checkpoints)."""
        gan = self.gan
        holders = [gan.generator, gan.discriminator, gan.g_optimizer, gan.d_optimizer]
        if gan.ema_generator is not None:
            holders.append(gan.ema_generator)
        return all(np.isfinite(keras.ops.convert_to_numpy(v)).all()
                   for holder in holders for v in holder.variables
                   if v.dtype.startswith("float"))

    def save(self) -> Path:
        """A checkpoint of the state now, numbered by the training steps done."""
        try:
            # Written whole, with its progress file, and handed on, or not at all.
            with signals.held(then_raise=False):
                path = self.manager.save(checkpoint_number=self.steps_done)
                self._write_progress()
        except (tf.errors.OpError, OSError) as exc:  # a full disk, a quota, a folder gone
            kept = self.manager.latest_checkpoint
            raise CheckpointWriteError(
                f"cannot write checkpoint ckpt-{self.steps_done} in {self.directory} "
                f"({_reason(exc)}); " + (f"{Path(kept).name} is kept and can be resumed from "
                                         "once there is room" if kept else
                                         "there is no earlier checkpoint")) from None
        if self.on_save is not None:
            self.on_save(Path(path))
        signals.raise_pending()
        return Path(path)

    def _write_progress(self) -> None:
        # What a person (or `ganflow resume` on a damaged folder) can read without TensorFlow.
        text = json.dumps({"steps_done": self.steps_done, "ganflow": __version__,
                           "checkpoints": list(self.manager.checkpoints)}, indent=2)
        staging = self.directory / f".{PROGRESS}.tmp"
        staging.write_text(text)
        os.replace(staging, self.directory / PROGRESS)

    def restore(self) -> int:
        """Load the newest readable checkpoint; returns the training steps it had done.

        A checkpoint that cannot be read (truncated, or from networks of another shape) is
        skipped for the one before it, with a line on stderr; none at all is an error.
        """
        candidates = list(reversed(self.manager.checkpoints))
        if not candidates:
            raise UsageError(f"no checkpoint in {self.directory}, nor in the run's MLflow "
                             "artifacts: pass --output-dir if the run's folder moved (a run that "
                             "stopped before its first checkpoint cannot be resumed)")
        problems = []
        for path in candidates:
            try:
                # restore, not read: save_counter, which the manager saves, is restored too
                self.checkpoint.restore(path).assert_existing_objects_matched()
                self.restored_metrics = {
                    tracker.name: (float(tracker.total.numpy()), float(tracker.count.numpy()))
                    for tracker in self.gan.metrics}
                return self.steps_done
            except Exception as exc:  # truncated files raise IndexError, OpError, ...
                reason = first_line(exc)
                problems.append(f"{Path(path).name}: {reason}")
                print(f"Checkpoint {path} cannot be read ({reason}); trying the one before",
                      file=sys.stderr, flush=True)
        raise UsageError(f"no checkpoint in {self.directory} can be read: {'; '.join(problems)}"
                         [:500])


class CheckpointCallback(keras.callbacks.Callback):
    """Saves a checkpoint every ``every`` training steps; weights that stopped being finite
    are not saved (the last good checkpoint stays the newest) and stop training, with
    ``diverged`` set.

    A step that ends an epoch is saved at the epoch's end, after the callbacks before this
    one (give it last) have logged the epoch and evaluated it: a run resumed from there does
    not skip them."""

    def __init__(self, checkpoints: Checkpoints, every: int, steps_per_epoch: int):
        super().__init__()
        self.checkpoints = checkpoints
        self.every = every
        self.steps_per_epoch = steps_per_epoch
        self.diverged: tuple[str, int] | None = None  # ("weights", step) if they stopped being finite

    def on_train_batch_end(self, batch, logs=None):
        signals.raise_pending()  # a stop lost in a callback stops here, after this step
        step = self.checkpoints.steps_done
        if self.every and step % self.every == 0 and step % self.steps_per_epoch:
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        step = self.checkpoints.steps_done
        if self.every and step % self.every == 0 and not self.model.stop_training:
            self.save()

    def save(self) -> Path | None:
        """Save now, if the weights are finite and this step is not saved yet; returns the
        newest checkpoint's path (None when refused)."""
        latest = self.checkpoints.manager.latest_checkpoint
        if latest and latest.endswith(f"-{self.checkpoints.steps_done}"):
            return Path(latest)
        if not self.checkpoints.weights_are_finite():
            # Losses can stay finite a while after a weight is not (a dead unit, an unused
            # optimizer slot): that stops the run as a diverged loss does.
            self.diverged = self.diverged or ("weights", self.checkpoints.steps_done)
            if self.model is not None:
                self.model.stop_training = True
            return None
        return self.checkpoints.save()


def saved_in(directory: Path) -> bool:
    """Whether ``directory`` holds a checkpoint (readable or not)."""
    return tf.train.get_checkpoint_state(str(directory)) is not None


def staged(path: Path, staging: Path) -> Path:
    """Checkpoint ``path``'s files, linked (or copied) into ``staging/<its name>/`` with the
    ``COMPLETE`` marker: a copy the checkpoint manager cannot delete while it waits to be
    uploaded."""
    import shutil

    folder = staging / path.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for part in path.parent.glob(path.name + ".*"):
        try:
            os.link(part, folder / part.name)
        except OSError:
            shutil.copy2(part, folder / part.name)
    (folder / MARKER).write_text(json.dumps({"ganflow": __version__}))
    return folder


def upload(client, run_id: str, folder: Path, keep: int) -> None:
    """Log a staged checkpoint folder to the run (the marker last), keep the newest ``keep``
    checkpoints there, and delete the folder."""
    import shutil

    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    if folder.exists():  # absent: uploaded before a stop that saved this call again
        target = f"{IN_MLFLOW}/{folder.name}"
        for part in sorted(folder.iterdir(), key=lambda f: f.name == MARKER):
            client.log_artifact(run_id, str(part), target)
    logged = sorted(_logged_numbers(client, run_id))
    if len(logged) > keep:
        repository = get_artifact_repository(client.get_run(run_id).info.artifact_uri)
        for number in logged[:-keep]:
            try:
                repository.delete_artifacts(f"{IN_MLFLOW}/ckpt-{number}")
            except (NotImplementedError, OSError):
                break  # a store that cannot delete keeps them all
    shutil.rmtree(folder, ignore_errors=True)


def _logged_numbers(client, run_id: str) -> list[int]:
    return [int(f.path.rsplit("-", 1)[1]) for f in client.list_artifacts(run_id, IN_MLFLOW)
            if f.is_dir and f.path.rsplit("/", 1)[-1].startswith("ckpt-")]


def fetch(run_id: str, directory: Path) -> bool:
    """Download the newest complete checkpoint the run logged to MLflow into ``directory``
    (where it has none); returns whether there was one."""
    import tempfile

    import mlflow

    client = mlflow.MlflowClient()
    for number in sorted(_logged_numbers(client, run_id), reverse=True):
        target = f"{IN_MLFLOW}/ckpt-{number}"
        names = [f.path.rsplit("/", 1)[-1] for f in client.list_artifacts(run_id, target)]
        if MARKER not in names:
            continue  # cut short while uploading
        directory.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        with tempfile.TemporaryDirectory(dir=directory) as scratch:
            local = Path(client.download_artifacts(run_id, target, scratch))
            for part in local.iterdir():
                if part.name != MARKER:
                    os.replace(part, directory / part.name)
        path, now = str(directory / f"ckpt-{number}"), time.time()
        # Newer than the last preserved one, or the manager would not count it as its own.
        tf.compat.v1.train.update_checkpoint_state(
            str(directory), path, [path], all_model_checkpoint_timestamps=[now],
            last_preserved_timestamp=now - 1)
        print(f"Checkpoint ckpt-{number} downloaded from the run's MLflow artifacts",
              file=sys.stderr, flush=True)
        return True
    return False
