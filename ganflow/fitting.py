"""The third step of a run: ``gan.fit`` with the run's callbacks, from wherever it stands.

One builder (``callbacks_for``) and one fit (``fit``) serve the chief and the other workers of
``--strategy multiworker`` alike: a worker's callbacks log nowhere and draw nothing, but run
every collective operation the chief's run (each metric window's read, each checkpoint's
save), at the same steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ganflow import callbacks, checkpoints, noise
from ganflow.prepare import steps_per_call

class Nowhere:
    """Where a worker that is not the chief logs: nowhere."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _no_view(generator, path, title):
    return path, {}


@dataclass(frozen=True)
class Callbacks:
    """A run's callbacks, in the order Keras calls them: the guard first (a diverged step is
    not logged), the tracking watch after the logger (the step it stops at is logged), the
    checkpoints last (an epoch is logged and evaluated before it is saved)."""

    guard: callbacks.DivergenceGuard
    logger: callbacks.MlflowLogger
    saver: checkpoints.CheckpointCallback
    watch: callbacks.TrackingWatch | None = None
    evaluations: callbacks.EvaluationLogger | None = None
    input_watch: callbacks.InputWatch | None = None

    def __iter__(self):
        return iter(c for c in (self.guard, self.logger, self.input_watch, self.watch,
                                self.evaluations, self.saver) if c is not None)

    @property
    def diverged(self) -> tuple[str, int] | None:
        """(what, step) when a loss or the weights stopped being finite."""
        return self.guard.diverged or self.saver.diverged

    @property
    def span(self) -> int:
        """How many steps, ending at ``diverged``'s, the divergence may have happened in."""
        return self.guard.span if self.guard.diverged else 1


def callbacks_for(prepared, store: checkpoints.Checkpoints, samples_dir: Path, *,
                  outbox=None, restored_metrics: dict | None = None, logged_until: int = -1,
                  report=None, say=None) -> Callbacks:
    """The callbacks of ``prepared``'s run, checkpointing into ``store``. With ``outbox`` (the
    chief's ``ganflow.outbox.Outbox``) they log, draw samples, watch the tracking store and
    evaluate, and, for data streamed from its source, time the input pipeline alone now and
    tell ``say`` if training turns out input-bound; without, they only keep in step.
    ``restored_metrics``: a checkpoint's running metrics, when it was taken mid-epoch; nothing
    at or before ``logged_until`` is logged again (a resumed run)."""
    from ganflow import views

    config, gan, per_epoch = prepared.config, prepared.gan, prepared.steps_per_epoch
    tracked = outbox is not None
    view = views.SampleView(prepared.source, config.latent_dim, config.samples, config.seed,
                            gan.num_classes if gan.conditional else None) if tracked else _no_view
    evaluator = prepared.evaluator if tracked else None
    return Callbacks(
        guard=callbacks.DivergenceGuard(),
        logger=callbacks.MlflowLogger(outbox or Nowhere(), config.log_every, per_epoch,
                                      samples_dir, view, logged_until=logged_until,
                                      resume_metrics=restored_metrics),
        saver=checkpoints.CheckpointCallback(
            store, per_epoch if config.checkpoint_every is None else config.checkpoint_every,
            per_epoch),
        watch=callbacks.TrackingWatch(outbox, config.tracking_timeout) if tracked else None,
        input_watch=_input_watch(prepared, outbox, say) if tracked and say else None,
        evaluations=None if evaluator is None else callbacks.EvaluationLogger(
            outbox, evaluator, config.eval_every, per_epoch,
            noise.latent(config.eval_samples, config.latent_dim, config.seed, "eval"), report,
            evaluator.labels(config.eval_samples, config.seed) if gan.conditional else None,
            logged_until=logged_until, epochs=config.epochs))


def _input_watch(prepared, outbox, say) -> callbacks.InputWatch | None:
    """An ``InputWatch`` for data that streams from its source every pass (not cached), with
    the rate its pipeline gives alone, measured now (the run's tag
    ``ganflow.input_examples_per_s``)."""
    from ganflow.data import caches, input_rate

    config = prepared.config
    if caches(prepared.source, config.cache):
        return None
    rate = input_rate(_pipeline(prepared)(0), prepared.per_step)
    outbox.set_tags({"ganflow.input_examples_per_s": f"{rate:.0f}"})
    return callbacks.InputWatch(outbox, rate, prepared.per_step, say)


def _pipeline(prepared):
    """The run's stream of real batches from a number of steps on."""
    from ganflow.data import training_pipeline

    config = prepared.config
    return lambda skip: training_pipeline(prepared.source, prepared.per_step, config.seed,
                                          config.cache, config.shuffle_buffer_mb).skip(skip)


def fit(prepared, run_callbacks: Callbacks, done: int, verbose) -> Any:
    """Train ``prepared.gan`` from ``done`` training steps to the run's last, SIGTERM
    stopping it as Ctrl-C does (a ``KeyboardInterrupt`` between two calls into TensorFlow).
    Returns the last ``fit`` call's history (None when there was nothing left to train)."""
    from ganflow import signals

    config = prepared.config
    with signals.terminate_as_interrupt():
        # A stop lost while the run was set up (its handler ran in a callback Python cannot
        # raise from) stops it here, not after the first step, which traces (and may compile).
        signals.raise_pending()
        return fit_from(
            prepared.gan, _pipeline(prepared),
            done, prepared.steps_per_epoch, config.epochs, list(run_callbacks), verbose,
            lambda at: steps_per_call(config, prepared.steps_per_epoch, at))


def fit_from(gan, pipeline_from, done: int, steps_per_epoch: int, epochs: int, callbacks,
             verbose, per_call=lambda done: 1):
    """``gan.fit`` from ``done`` training steps on: a partial epoch first when ``done`` falls
    inside one (Keras starts epochs only at their beginning), then the remaining epochs. Each
    call gets the data stream from where it stands (``pipeline_from(steps to skip)``), and
    makes ``per_call(done)`` steps per call into TensorFlow (see ``steps_per_call``).
    Returns the last call's history (None when there was nothing left to train)."""
    history = None
    epoch, within = divmod(done, steps_per_epoch)
    common = {"callbacks": callbacks, "verbose": verbose}
    if within and epoch < epochs:
        gan.set_steps_per_execution(per_call(done))
        history = gan.fit(pipeline_from(done), epochs=epoch + 1, initial_epoch=epoch,
                          steps_per_epoch=steps_per_epoch - within, **common)
        epoch, done = epoch + 1, (epoch + 1) * steps_per_epoch
    if epoch < epochs and not gan.stop_training:
        gan.set_steps_per_execution(per_call(done))
        history = gan.fit(pipeline_from(done), epochs=epochs, initial_epoch=epoch,
                          steps_per_epoch=steps_per_epoch, **common)
    return history
