"""run(config): resolve -> prepare -> fit -> register, the whole of ``ganflow run``.

Each step takes the complete result of the one before: ``resolve`` (``ganflow.resolve``:
every name and setting, no data), ``prepare`` (``ganflow.prepare``: data, model, evaluator; no
MLflow run yet, so a mistake costs seconds and leaves nothing half made), fit
(``ganflow.fitting``, inside the MLflow run, checkpointing as it goes) and register
(``ganflow.registry.register_generator``). ``ganflow resume`` (``ganflow.resume``) runs the same
path from the run's newest checkpoint. A trainer that fits a density at once takes
``ganflow.likelihood``'s path instead.

Ctrl-C or SIGTERM saves a checkpoint, logs the generator (not registered) and marks the run
KILLED. Losses or weights that stop being finite end the run FAILED, with nothing registered
and the last good checkpoint kept. A tracking store that stays away past
``--tracking-timeout`` stops the run with its checkpoint. Whatever ends a run, what the store
did not take is in the run's journal (``ganflow.journal``), which ``ganflow resume``, the next
``ganflow run`` in the same folder, or ``ganflow sync`` delivers.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ganflow import devices, fitting, journal, likelihood, resume, signals, tracking
from ganflow.config import RunConfig
from ganflow.errors import Stopped, UsageError, first_line
from ganflow.outbox import Outbox, TrackingUnavailable, retry
from ganflow.plugins import Plugins
from ganflow.prepare import Prepared, prepare
from ganflow.resolve import resolve
from ganflow.result import RunResult

def run(config: RunConfig, plugins: Plugins, verbose: int = 1, report=None,
        resume_run_id: str | None = None) -> RunResult:
    """Train, track and register one run (``resume_run_id``: continue that MLflow run from its
    newest checkpoint). ``report`` receives a line per evaluation. Under ``--strategy
    multiworker`` only the chief tracks and registers; the other workers train in step with
    it and keep nothing."""
    # Ctrl-C, SIGTERM and SIGHUP stop the run alike, as a KeyboardInterrupt wherever it
    # stands, once (ganflow.signals): each step below says what a stop there keeps.
    opened: list[str] = []  # the MLflow run, once there is one
    with signals.terminate_as_interrupt():
        try:
            return _run(config, plugins, verbose, report, resume_run_id, opened)
        except KeyboardInterrupt as exc:
            name = signals.name_of(exc)
            if opened:  # while it stopped for another reason: its checkpoints are kept
                raise Stopped(f"stopped by {name} while run {opened[0]} was ending: ganflow "
                              f"resume {opened[0]} goes on from its last checkpoint") from None
            made = f"run {resume_run_id} is as it was" if resume_run_id else "nothing was made"
            raise Stopped(f"stopped by {name} before the run started: {made}") from None


def _run(config, plugins, verbose, report, resume_run_id, opened) -> RunResult:
    role = devices.worker(config.strategy)  # TF_CONFIG checked before anything starts
    resolved = resolve(config, plugins)
    if role is not None and not role.chief:
        return _train_as_worker(resolved, role, verbose, resume_run_id)
    # The folder and the store before the data: a mistake there must not cost a dataset load.
    tracking.check_writable(Path(config.output_dir), "--output-dir")
    tracking_uri = tracking.use_tracking_uri(config.tracking_uri)
    if resolved.fits_density:
        if resume_run_id:
            raise UsageError(f"run {resume_run_id} fitted a density at once (trainer "
                             f"{config.trainer}): there is nothing to resume; run it again")
        return likelihood.run(resolved, tracking_uri)
    with resume.hold(resolved.config.output_dir, resume_run_id):
        prepared = prepare(resolved, role)
        if resume_run_id is None:  # what runs killed or cut off here before logged goes first
            for replayed in journal.replay_left(Path(config.output_dir), tracking_uri,
                                                warn=_say):
                _say(replayed.line())
        started = time.perf_counter()
        # Before the run reopens: a checkpoint that cannot be read, a store that does not
        # take the journal, change nothing.
        restored = resume.restore(prepared, resume_run_id) if resume_run_id else None
        logged_until = _deliver_journal(config, resume_run_id, restored) if restored else -1
        at = restored.done if restored else 0
        with tracking.start_run(prepared.config, prepared.params(), prepared.providers,
                                resume_run_id, at) as active:
            opened.append(active.info.run_id)
            try:
                tracked = TrackedRun(prepared, active.info.run_id, tracking_uri, restored,
                                     logged_until, report)
            except KeyboardInterrupt as exc:
                raise tracking.stopped_at_start(active.info.run_id, exc, at) from None
            try:
                trained = tracked.fit(verbose)
                registered, trained = tracked.finish(trained)
            except KeyboardInterrupt as exc:  # it came between what fit and finish handle
                raise tracked.stopped_between(exc) from None
    return RunResult.of(active, tracking_uri, seconds=time.perf_counter() - started,
                        metrics=trained.metrics, samples_path=trained.grid,
                        registered=registered, interrupted=bool(trained.interrupted),
                        steps_done=trained.steps_done, checkpoint=trained.checkpoint)


@dataclass(frozen=True)
class Trained:
    """How training ended."""

    metrics: dict  # the last training logs, the last toy metrics and evaluation
    steps_done: int
    checkpoint: Path | None  # the newest checkpoint
    grid: Path | None  # the newest sample picture
    interrupted: str | None = None  # the signal that stopped it
    diverged: tuple[str, int] | None = None  # (what, step) that stopped being finite
    span: int = 1  # how many steps, ending there, it may have happened in


class TrackedRun:
    """The chief's run, inside its MLflow run: its checkpoints, the outbox that sends what
    it logs, and the callbacks that log, evaluate and checkpoint while it trains."""

    def __init__(self, prepared: Prepared, run_id: str, tracking_uri: str,
                 restored: resume.Restored | None, logged_until: int = -1, report=None):
        """``logged_until``: the last step a resumed run's store holds (``_deliver_journal``);
        nothing up to it is logged again."""
        import mlflow

        from ganflow import checkpoints

        config = prepared.config
        self.prepared, self.run_id, self.tracking_uri = prepared, run_id, tracking_uri
        self.folder = folder = Path(config.output_dir) / run_id
        self.done = restored.done if restored else 0
        self.store = restored.store if restored else checkpoints.Checkpoints(
            prepared.gan, folder / "checkpoints", config.keep_checkpoints)
        if restored:
            mlflow.set_tag("ganflow.resumed_from_step", str(self.done))
        else:
            tracking.log_dataset(config, prepared.source)
        try:
            writer = journal.Journal(folder, run_id, tracking_uri)
        except BlockingIOError:
            raise UsageError(f"run {run_id}'s journal is being sent by another process "
                             "(ganflow sync): wait for it, then resume") from None
        self.outbox = Outbox(run_id, journal=writer)
        self._registered = None  # once the generator is logged (and registered)
        if config.checkpoint_to_mlflow:
            self.store.on_save = lambda path: self.outbox.log_checkpoint(
                checkpoints.staged(path, folder / "to-mlflow"), config.keep_checkpoints)
        self.callbacks = fitting.callbacks_for(
            prepared, self.store, folder / "samples", outbox=self.outbox, report=report,
            restored_metrics=_mid_epoch(restored, prepared.steps_per_epoch),
            logged_until=logged_until, say=_say)

    def fit(self, verbose) -> Trained:
        """Train to the end or to a stop, then save the last checkpoint and the samples'
        animation."""
        from ganflow import checkpoints

        config, callbacks = self.prepared.config, self.callbacks
        interrupted, metrics = None, {}
        single_process = config.strategy != "multiworker"  # no other process to wait for
        try:
            with signals.resurfacing():
                metrics = self._train(verbose)
        except KeyboardInterrupt as exc:
            interrupted = signals.name_of(exc)
            if single_process:  # else reading the metrics would wait for workers that go on
                # The steps since the last window are one, ending here: a step may be done
                # whose callbacks were cut short, and the resumed run starts after it.
                callbacks.logger.catch_up(stopping=True)
        except devices.lost_peer_errors() as exc:
            if single_process:
                self.outbox.close()
                raise
            raise self._failed(devices.WorkerLost.during(exc, self.store, self.run_id),
                               end=True) from None
        except checkpoints.CheckpointWriteError as exc:
            raise self._failed(exc) from None
        except BaseException:
            self.outbox.close()  # what was logged before the crash still reaches the store
            raise
        # A chief stopped alone cannot save: a checkpoint's metric reads wait for every worker.
        stopped_alone = interrupted and not single_process
        try:
            with signals.resurfacing():
                self._save_and_animate(stopped_alone)
        except KeyboardInterrupt as exc:  # the stop came as training ended: it is saved
            interrupted = interrupted or signals.name_of(exc)
        latest = self.store.manager.latest_checkpoint
        # callbacks.diverged: the weights too, checked as the last one is saved
        return Trained(metrics, self.store.steps_done, Path(latest) if latest else None,
                       callbacks.logger.last_grid, interrupted, callbacks.diverged,
                       callbacks.span)

    def _train(self, verbose) -> dict:
        """Train to the end; the last training logs, sample and evaluation metrics."""
        callbacks = self.callbacks
        history = fitting.fit(self.prepared, callbacks, self.done, verbose)
        if history is not None:
            metrics = {k: float(v[-1]) for k, v in history.history.items()}
        else:  # nothing left to train (stopped as it ended): the run's last values
            metrics = tracking.last_metrics(self.run_id)
        metrics.update(callbacks.logger.last_view_metrics)
        if callbacks.evaluations is not None:
            metrics.update(callbacks.evaluations.last)
        return metrics

    def _save_and_animate(self, stopped_alone: bool) -> None:
        """Training's last checkpoint, and the animation of its sample pictures."""
        callbacks = self.callbacks
        if callbacks.diverged is None and not stopped_alone:
            callbacks.saver.save()
        grids = sorted(callbacks.logger.samples_dir.glob("epoch_*.png"))  # a resume's too
        if callbacks.diverged is None and len(grids) > 1:
            from ganflow.images import animate

            try:
                gif = animate(grids, self.folder / "samples.gif")
            except (OSError, ValueError, OverflowError) as exc:  # a picture, not the work
                _say(f"No animation of the samples ({first_line(exc)}); the run goes on")
                return
            self.outbox.log_artifact(gif)

    def finish(self, trained: Trained):
        """Deliver what was logged; then end the run: a finished one's generator logged and
        registered, a stopped one's logged only (the run KILLED), a diverged one's not at all
        (FAILED). A stop meanwhile ends the run KILLED, its training done and saved: the
        resumed run only ends it. Returns the ``registry.Registered`` (None for a run stopped
        here) and how the run ended."""
        try:
            with signals.resurfacing():
                return self._finish(trained), trained
        except KeyboardInterrupt as exc:
            if self._registered is not None and not trained.interrupted:
                with signals.held(then_raise=False):  # all was done: the stop came too late
                    tracking.end_run("FINISHED")
                return self._registered, trained
            stopped = replace(trained, interrupted=trained.interrupted or signals.name_of(exc))
            self._end_stopped(stopped.interrupted, stopped.steps_done)
            return None, stopped

    def stopped_between(self, interrupt: KeyboardInterrupt) -> Stopped:
        """The error of a stop that came in the instants between the parts that handle one
        (training, saving, ending), a garbage collection's length or so: the run ends KILLED
        at the steps done, as ``finish`` would have ended it, not FAILED as MLflow would."""
        name = signals.name_of(interrupt)
        steps = self.store.steps_done
        self._end_stopped(name, steps)
        return Stopped(f"stopped by {name} while run {self.run_id} was ending: it is marked "
                       f"KILLED at step {steps}; ganflow resume {self.run_id} goes on from its "
                       "last checkpoint")

    def _finish(self, trained: Trained):
        import mlflow

        config, outbox = self.prepared.config, self.outbox
        # Stopped by the user: what the store has not taken yet stays in the journal, not
        # waited for; a second signal waits for nothing.
        patience = min(config.tracking_timeout, 10.0) if trained.interrupted else \
            config.tracking_timeout
        try:
            flushed = outbox.flush(patience, give_up=signals.hurried)
            if self.callbacks.watch.lost is not None or not (flushed or signals.hurried()):
                raise TrackingUnavailable(
                    f"the tracking store did not answer for {outbox.down_for():.0f} s")
            outbox.close(timeout=0.0 if signals.hurried() else 120.0)
            if trained.diverged is not None:
                raise self._diverged(trained)
            if trained.interrupted and signals.hurried():  # the generator waits for resume
                self._end_stopped(trained.interrupted, trained.steps_done)
                return None
            self._registered = registered = retry(
                lambda: self._register(trained), "logging the generator", outbox, patience)
            if trained.interrupted:
                retry(lambda: mlflow.set_tags({"ganflow.interrupted": trained.interrupted,
                                               "ganflow.stopped_at_step": str(trained.steps_done)}),
                      "tagging the run", outbox, patience)
            # Ended here, not by the block around the run: a signal from now on changes nothing.
            with signals.held(then_raise=False):
                tracking.end_run("KILLED" if trained.interrupted else "FINISHED")
        except TrackingUnavailable as exc:
            raise self._unreachable(exc) from None
        return registered

    def _register(self, trained: Trained):
        """Log the generator, and register it when the run finished."""
        from ganflow import registry

        config, gan, evaluator = self.prepared.config, self.prepared.gan, self.prepared.evaluator
        evaluated = evaluator is not None and "eval/fid" in trained.metrics
        return registry.register_generator(
            gan.sampling_generator, config.latent_dim, self.prepared.source.spec.shape,
            run_id=self.run_id, recipe=config.recipe, metrics=trained.metrics,
            name=None if trained.interrupted or not config.register else config.model_name,
            num_classes=gan.num_classes if gan.conditional else None, step=trained.steps_done,
            made_by={"recipe": config.recipe, "loss": config.loss, "dataset": config.dataset,
                     "ema": config.ema, "regularizers": ";".join(config.regularizers) or None},
            trained=f"{config.epochs} epochs, {trained.steps_done} training steps",
            measured_with={"eval.features": str(evaluator.features),
                           "eval.dataset": config.dataset,
                           "eval.samples": str(config.eval_samples)} if evaluated else None)

    def _end_stopped(self, signal_name: str, steps: int) -> None:
        """End a run stopped while it ended: KILLED, tagged with the signal and its steps;
        what the store has not taken stays in the journal."""
        self.outbox.close(timeout=0.0 if signals.hurried() else 10.0)
        tracking.end_stopped(signal_name, steps)

    def _failed(self, error: Exception, end: bool = False) -> Exception:
        """``error``, once the run is tagged with it (and ended FAILED, with ``end``)."""
        import mlflow

        self.outbox.close()
        _tag_failure(str(error), self.store.steps_done)
        if end:
            mlflow.end_run(status="FAILED")
        return error

    def _diverged(self, trained: Trained) -> Exception:
        """The error of a run whose losses or weights stopped being finite: it says what and
        where (in one of the ``span`` steps up to the step), and how to go on; the run is
        tagged (MLflow ends it FAILED as the error leaves it), nothing is registered."""
        from ganflow.errors import TrainingDiverged

        what, step = trained.diverged
        what = "the weights are" if what == "weights" else f"{what} is"
        span = trained.span
        at = f"step {step}" if span == 1 else f"one of steps {step - span + 1}-{step}"
        kept = self.store.manager.latest_checkpoint
        _tag_failure(f"{what} not finite at {at}", step)
        where = (f"the last good checkpoint is {Path(kept).name}: resume from it with lower "
                 f"learning rates: ganflow resume {self.run_id} --lr-g LR --lr-d LR") if kept \
            else "there is no checkpoint yet: start again with lower --lr-g and --lr-d"
        return TrainingDiverged(f"training diverged: {what} not finite at {at}; the run "
                                f"is marked FAILED and nothing was registered; {where}")

    def _unreachable(self, exc: TrackingUnavailable) -> TrackingUnavailable:
        """The error of a run whose tracking store went away: its checkpoint is saved; what
        the store did not take is saved beside it for ``ganflow resume``, which also closes
        the MLflow run."""
        import mlflow

        kept = len(self.outbox.close())
        try:  # the store is away: the run cannot be marked; the next ganflow command marks it
            mlflow.end_run(status="KILLED")
        except mlflow.exceptions.MlflowException:
            pass
        latest = self.store.manager.latest_checkpoint
        where = f"checkpoint {latest} (step {self.store.steps_done})" if latest else \
            "no checkpoint"
        return TrackingUnavailable(
            f"{exc}: training stopped with {where}; {kept} logging calls kept in "
            f"{self.outbox.journal.path}; when the store answers again: ganflow resume "
            f"{self.run_id} --tracking-uri {self.tracking_uri}")


def _deliver_journal(config, run_id: str, restored: resume.Restored) -> int:
    """What the stopped process of a resumed run logged and the store missed, delivered from
    its journal before the run reopens; returns the last step the store then holds, which the
    resumed run logs nothing at or before. Calls after both that step and the checkpoint's
    are left out: the resumed run trains, and logs, those steps again."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        until = max(restored.done, tracking.last_logged_step(run_id))
        replayed = journal.replay(Path(config.output_dir) / run_id, run_id, client, until)
    except Exception as exc:  # noqa: BLE001 - the store's errors are many
        from ganflow.outbox import transient

        if not transient(exc):
            raise
        raise TrackingUnavailable(f"the tracking store did not take run {run_id}'s journal "
                                  f"({first_line(exc)}): resume when it answers") from None
    if replayed is not None and (replayed.sent or replayed.dropped):
        _say(replayed.line())
    return tracking.last_logged_step(run_id)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _tag_failure(what: str, step: int) -> None:
    import mlflow

    mlflow.set_tags({"ganflow.failure": what, "ganflow.failed_at_step": str(step)})


def _mid_epoch(restored: resume.Restored | None, steps_per_epoch: int) -> dict | None:
    """A restored checkpoint's running metrics when it was taken mid-epoch: the epoch's means
    go on from them."""
    if restored is None or not restored.done % steps_per_epoch:
        return None
    return restored.store.restored_metrics


def _train_as_worker(resolved, role, verbose, resume_run_id: str | None) -> RunResult:
    """A worker of ``--strategy multiworker`` that is not the chief: it trains in step with
    the chief (``ganflow.fitting``) and keeps nothing.

    Its checkpoints go to a scratch folder removed at the end (TensorFlow's multi-worker
    guide); its metrics, pictures and model go nowhere; it does not evaluate. Resumed, it
    restores the chief's newest checkpoint: from the run's folder when this machine sees it,
    else from the run's MLflow artifacts (``--checkpoint-to-mlflow``)."""
    import tempfile

    from ganflow import checkpoints

    started = time.perf_counter()
    prepared = prepare(resolved, role)
    restored = resume.restore(prepared, resume_run_id) if resume_run_id else None
    with tempfile.TemporaryDirectory(prefix=f"ganflow-worker-{role.index}-") as scratch:
        store = checkpoints.Checkpoints(prepared.gan, Path(scratch) / "checkpoints", 1)
        callbacks = fitting.callbacks_for(prepared, store, Path(scratch),
                                          restored_metrics=_mid_epoch(restored,
                                                                      prepared.steps_per_epoch))
        try:
            fitting.fit(prepared, callbacks, restored.done if restored else 0, verbose)
            if callbacks.diverged is None:
                callbacks.saver.save()  # as the chief does last
        except devices.lost_peer_errors() as exc:
            raise devices.WorkerLost.during(exc, None, resume_run_id) from None
        except KeyboardInterrupt as exc:
            from ganflow import signals

            raise devices.WorkerStopped(
                f"{role.name} stopped by {signals.name_of(exc)} at step {store.steps_done}; "
                "the other workers stop when they miss it, and the chief keeps its last "
                "checkpoint: start every worker again with ganflow resume RUN_ID") from None
    return RunResult(run_id=resume_run_id or "", seconds=time.perf_counter() - started,
                     steps_done=store.steps_done, worker=role)
