"""Keras callbacks that log a run to MLflow while it trains: metric windows, epoch means,
sample pictures and sample-quality evaluations.

No autolog and no mlflow.keras.MlflowCallback: with a GAN subclass they log the wrong
optimizer, fail the signature, step metrics at 0 and hash the whole tf.data dataset.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from ganflow import signals
from ganflow.tracking import SAMPLES


def steps_done(model) -> int:
    """Training steps the model has done in all (restored ones included)."""
    return int(keras.ops.convert_to_numpy(model.steps_done))




def epoch_metric(name: str) -> str:
    """The MLflow key of an epoch's mean of the metric ``name``: ``epoch/mean_d_loss``,
    ``epoch/mean_reg_r1``.

    The UI puts a chart in the section named by the key up to its last ``/`` and titles it
    with the rest: ``epoch/d_loss`` showed as a second chart titled ``d_loss``, and
    ``epoch/reg/r1`` as a second ``r1``."""
    return f"epoch/mean_{name.replace('/', '_')}"


class MlflowLogger(keras.callbacks.Callback):
    """Logs metric windows, epoch means and a sample picture each epoch (an MLflow image, key
    ``samples``, at the epoch's last step: the UI shows them as a slider) to the run.

    Steps are training steps (for the default trainer, generator updates). A window's value is
    the mean over the updates in it, read off the model's ``Mean`` trackers exactly:
    (total_now - total_then) / (count_now - count_then); windows end every ``log_every`` steps
    of an epoch and at its end. A metric that skipped every update of a window (a lazy
    regularizer) is not logged there. ``view`` (a ``SampleView``) draws the picture from the
    model's sampling generator (the EMA copy when there is one) and may return metrics, logged
    at the same step.

    Everything goes through ``outbox`` (a ``ganflow.outbox.Outbox`` of the run), so training
    does not wait on the tracking store.

    A resumed run (``resume_metrics``: the trackers' (total, count) in the checkpoint, taken
    mid-epoch) puts them back after Keras resets them, so the epoch's means go on; nothing at
    or before ``logged_until`` (logged before the run stopped) is logged again.
    """

    def __init__(self, outbox, log_every: int, steps_per_epoch: int, samples_dir: Path, view,
                 logged_until: int = -1, resume_metrics: dict | None = None):
        super().__init__()
        self.outbox = outbox
        self.log_every = log_every
        self.steps_per_epoch = steps_per_epoch
        self.samples_dir = Path(samples_dir)
        self.view = view
        self.logged_until = logged_until
        self.resume_metrics = resume_metrics
        self.last_grid: Path | None = None
        self.last_view_metrics: dict[str, float] = {}
        self._epoch = 0
        self._mark = {}
        self._window_logged = logged_until  # the last step whose window is logged

    def on_train_begin(self, logs=None):
        if steps_done(self.model) == 0:
            self._write_grid(0)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._mark = {}  # metric name -> (total, count) at the last window; Keras resets both
        if self.resume_metrics:
            for tracker in self.model.metrics:
                if tracker.name in self.resume_metrics:
                    total, count = self.resume_metrics[tracker.name]
                    tracker.total.assign(total)
                    tracker.count.assign(count)
                    self._mark[tracker.name] = (total, count)
            self.resume_metrics = None

    def on_train_batch_end(self, batch, logs=None):
        self.catch_up()

    def catch_up(self, stopping: bool = False) -> None:
        """Log the window that ends at the step done now, if one does and it is not logged
        yet. ``stopping`` (training was interrupted): the steps since the last window are a
        window, ending here; the resumed run's first window starts after it."""
        if self.model is None:  # stopped before fit began
            return
        step = steps_done(self.model)
        within = step - self._epoch * self.steps_per_epoch
        if within % self.log_every and within != self.steps_per_epoch and not stopping:
            return
        window, marks = {}, {}
        for tracker in self.model.metrics:
            # Read as values: under a strategy they are sync-on-read variables, summed
            # over the replicas when read here.
            total, count = (float(keras.ops.convert_to_numpy(v))
                            for v in (tracker.total, tracker.count))
            old_total, old_count = self._mark.get(tracker.name, (0.0, 0.0))
            if count > old_count:
                window[tracker.name] = (total - old_total) / (count - old_count)
            marks[tracker.name] = (total, count)
        # A window logged before a resume moves the mark (the next one starts after it) but
        # is not logged again; a stopped (diverged) run logs nothing more.
        wanted = step > self._window_logged and window and \
            not getattr(self.model, "stop_training", False)
        # Marks moved and the window logged, or neither: a stop that came between the two
        # left the stop's own catch_up an empty window, and the step unlogged for good.
        with signals.held():
            self._mark.update(marks)
            if wanted:
                self.outbox.log_metrics(window, step=step)
                self._window_logged = step

    def on_epoch_end(self, epoch, logs=None):
        step = (epoch + 1) * self.steps_per_epoch
        if self.model.stop_training and (
                steps_done(self.model) != step
                or not all(np.isfinite(float(v)) for v in (logs or {}).values())):
            # Stopped mid-epoch (interrupted, diverged, the store away), or diverged in its
            # last step: nothing worth logging or drawing. An epoch that ran to its end
            # before a stop is logged: a resume starts after it and would never log it.
            return
        if step > self.logged_until:
            self.outbox.log_metrics(
                {epoch_metric(k): float(v) for k, v in (logs or {}).items()}, step=step)
        self._write_grid(epoch + 1)

    def _write_grid(self, epoch: int) -> None:
        path = self.samples_dir / f"epoch_{epoch:04d}.png"
        self.last_grid, metrics = self.view(self.model.sampling_generator, path, f"epoch {epoch}")
        step = epoch * self.steps_per_epoch
        if step > self.logged_until:  # not again after a resume
            self.outbox.log_image(self.last_grid, key=SAMPLES, step=step)
            if metrics:
                self.outbox.log_metrics(metrics, step=step)
        if metrics:
            self.last_view_metrics = metrics


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training at the first step whose losses are not finite; ``diverged`` is then
    (what, step). The losses Keras passes are the epoch's running means, so a loss that went
    NaN anywhere shows; with several steps per call into TensorFlow (``--steps-per-execution``)
    only at the call's end: ``span`` is then how many steps it may have happened in, ending at
    ``step``."""

    def __init__(self):
        super().__init__()
        self.diverged: tuple[str, int] | None = None
        self.span = 1

    def on_train_batch_end(self, batch, logs=None):
        for name in ("d_loss", "g_loss"):
            value = (logs or {}).get(name)
            if value is not None and not np.isfinite(float(value)):
                self.diverged = (name, steps_done(self.model))
                self.span = int(getattr(self.model, "steps_per_execution", 1) or 1)
                self.model.stop_training = True
                return


class TrackingWatch(keras.callbacks.Callback):
    """Stops training once the tracking store has been unreachable for more than ``timeout``
    seconds (``outbox.down_for()``); ``lost`` then holds that time and the step."""

    def __init__(self, outbox, timeout: float):
        super().__init__()
        self.outbox = outbox
        self.timeout = timeout
        self.lost: tuple[float, int] | None = None

    def on_train_batch_end(self, batch, logs=None):
        away = self.outbox.down_for()
        if away > self.timeout:
            self.lost = (away, steps_done(self.model))
            self.model.stop_training = True


class InputWatch(keras.callbacks.Callback):
    """Says once, on ``say`` and as the run's tag ``ganflow.input_bound``, when training takes
    real examples faster than half the rate its input pipeline gives them alone
    (``input_rate``, examples/s, measured before training): its steps then wait on data.
    Timed over ``steps`` steps after the first ``skip`` (tracing, warm-up); the rate training
    took is the tag ``ganflow.train_examples_per_s``."""

    MARGIN = 2.0  # the pipeline alone should give at least this many times what training takes

    def __init__(self, outbox, input_rate: float, per_step: int, say, skip: int = 5,
                 steps: int = 20):
        super().__init__()
        self.outbox, self.say = outbox, say
        self.input_rate, self.per_step = input_rate, per_step
        self.skip, self.steps = skip, steps
        self.consumed: float | None = None  # examples/s training took
        self._start: tuple[int, float] | None = None

    def on_train_batch_end(self, batch, logs=None):
        import time

        if self.consumed is not None:
            return
        step, now = steps_done(self.model), time.perf_counter()
        if self._start is None:
            if step >= self.skip:
                self._start = (step, now)
            return
        if step - self._start[0] < self.steps:
            return
        self.consumed = self.per_step * (step - self._start[0]) / (now - self._start[1])
        self.outbox.set_tags({"ganflow.train_examples_per_s": f"{self.consumed:.0f}"})
        if self.consumed * self.MARGIN > self.input_rate:
            line = (f"training is input-bound: the data pipeline gives {self.input_rate:,.0f} "
                    f"examples/s alone and training took {self.consumed:,.0f}/s (less than "
                    f"{self.MARGIN:g}x): keep the examples in memory (--cache memory) if they "
                    "fit, or prepare them at a lower resolution")
            self.say(f"Warning: {line}")
            self.outbox.set_tags({"ganflow.input_bound": line})


class EvaluationLogger(keras.callbacks.Callback):
    """Logs sample-quality metrics (``ganflow.evaluation``) every ``every`` epochs and after
    the last, at the step of that epoch's last generator update; the evaluation before
    training becomes params ``untrained.NAME``, the baseline, off the curves.

    Metrics go into ``outbox`` (see ``MlflowLogger``). Samples come from fixed noise (and, for a conditional generator, fixed ``labels``).
    Metrics of the sampling generator are ``eval/NAME``; with an EMA copy, G's own weights are
    scored too, as ``eval/NAME_no_ema``. ``report``, when given, receives a line per
    evaluation (the CLI prints it).
    """

    def __init__(self, outbox, evaluator, every: int, steps_per_epoch: int, noise: np.ndarray,
                 report=None, labels: np.ndarray | None = None, logged_until: int = -1,
                 epochs: int | None = None):
        super().__init__()
        self.outbox = outbox
        self.logged_until = logged_until
        self.epochs = epochs  # the run's, which a resumed run's first fit call does not see
        self.evaluator = evaluator
        self.every = every
        self.steps_per_epoch = steps_per_epoch
        self.noise = noise
        self.labels = labels
        self.report = report
        self.last: dict[str, float] = {}
        self._pending: str | None = None

    def on_train_begin(self, logs=None):
        if steps_done(self.model) == 0:
            self._evaluate(0)
        self._flush()

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        if self.model.stop_training:
            return  # diverged: nothing to score
        last = self.epochs or self.params.get("epochs")
        if (done % self.every == 0 or done == last) and \
                done * self.steps_per_epoch > self.logged_until:
            self._evaluate(done)

    # Keras's progress bar finishes an epoch's line after this callback's on_epoch_end: the
    # line is printed once the bar has moved on.
    def on_epoch_begin(self, epoch, logs=None):
        self._flush()

    def on_train_end(self, logs=None):
        self._flush()

    def _flush(self) -> None:
        if self._pending and self.report:
            self.report(self._pending)
        self._pending = None

    def _evaluate(self, epoch: int) -> None:
        from ganflow.evaluation import generate

        def score(generator):
            return self.evaluator.sampled(lambda z, labels: generate(generator, z, labels),
                                          self.noise, self.labels)

        values = score(self.model.sampling_generator)
        logged = {f"eval/{k}": v for k, v in values.items()}
        if epoch == 0:
            # The untrained networks' numbers (FID near 800) would flatten the curves that
            # matter: they are params, the baseline the curves start from.
            self.outbox.log_params({f"untrained.{k}": f"{v:.6g}" for k, v in values.items()})
        else:
            if self.model.ema_generator is not None:
                logged.update({f"eval/{k}_no_ema": v
                               for k, v in score(self.model.generator).items()})
            self.outbox.log_metrics(logged, step=epoch * self.steps_per_epoch)
            self.last = logged
        shown = ", ".join(f"{k.removeprefix('eval/')} {v:.4g}" for k, v in logged.items()
                          if k.startswith("eval/") and k != "eval/kid_std")
        self._pending = f"evaluation after epoch {epoch}: {shown}"
