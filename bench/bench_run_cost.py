"""What a full ``ganflow run`` costs beyond its bare training step: the input pipeline as the run
feeds it, the metric windows, the epoch means, each epoch's sample grid and checkpoint, and
MLflow logging (in its background thread), against ``GAN.fit`` of the same model on the same
pipeline with no callbacks.

    python bench/bench_run_cost.py                   # the dcgan recipe, 3 rounds of 5 epochs
    python bench/bench_run_cost.py --recipe toy --rounds 5
    python bench/bench_run_cost.py --parts           # also the run without each of its parts
    python bench/bench_run_cost.py --log-every 8     # metric windows every 8 steps

Both variants train the recipe's model from the same settings in this process, taking turns in
each round. Timed: the epochs after the first (which traces the step), from the end of the first
to the end of the last, in wall time and CPU time (``time.process_time``: every thread of the
process, MLflow's sender included). The run logs to a fresh SQLite store in a temporary folder;
it does not evaluate (``--eval-every 0``: an evaluation's cost is its own, see
bench/bench_evaluate.py) and does not register. The start (MLflow run, params) and the end
(logging the generator, about 1-2 s once per run) are not in the timed epochs.

``--parts`` adds runs with one part taken out each, to see what each costs: the per-step
callbacks (their ``on_train_batch_end``: metric windows, the divergence and tracking checks,
step-numbered checkpoints; Keras then neither calls them nor turns each step's logs into
numbers), the sample grids, the checkpoints, what the MLflow thread sends, or the journal
every logging call is written to first (``ganflow.journal``).

The run makes as many training steps per call into TensorFlow as fit between its metric
windows, checkpoints and epoch ends (``--steps-per-execution``, by default the largest such
count, up to 32); when that is more than one, the bare step with as many steps per call and
the run with one step per call are timed too, to show what the host's wait on every step
costs. The baseline bare step is Keras's ``fit`` default, one step per call.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class EpochClock:
    """(wall, cpu) at the end of each epoch, taken after every callback of that epoch."""

    def __init__(self):
        self.marks: list[tuple[float, float]] = []

    def mark(self):
        self.marks.append((time.perf_counter(), time.process_time()))

    def per_epoch(self) -> tuple[float, float]:
        (w0, c0), (w1, c1) = self.marks[0], self.marks[-1]
        epochs = len(self.marks) - 1
        return (w1 - w0) / epochs, (c1 - c0) / epochs


def main() -> None:
    from ganflow.config import CHOICES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="dcgan")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--log-every", type=int, default=None, metavar="N",
                        help="the run's metric windows (default: the recipe's)")
    parser.add_argument("--precision", default=None,
                        choices=CHOICES["precision"],
                        help="the networks' dtype policy (default: the recipe's)")
    parser.add_argument("--parts", action="store_true",
                        help="also time the run without each of its parts")
    args = parser.parse_args()

    import keras

    from ganflow import callbacks, checkpoints, journal, outbox
    from ganflow.data import training_pipeline
    from ganflow.devices import resolve_precision
    from ganflow.plugins import load_plugins
    from ganflow.prepare import prepare, steps_per_call
    from ganflow.resolve import configure, resolve
    from ganflow.runner import run

    plugins = load_plugins()
    folder = tempfile.mkdtemp(prefix="ganflow-bench-run-")

    def config(**flags):
        return configure(plugins, args.recipe, {
            "epochs": args.epochs, "eval_every": 0, "register": False,
            "log_every": args.log_every, "precision": args.precision,
            "tracking_uri": f"sqlite:///{folder}/mlflow.db", "output_dir": f"{folder}/runs",
            **flags})

    def bare(per_call: int = 1) -> tuple[float, float]:
        prepared = prepare(resolve(config(), plugins))
        prepared.gan.set_steps_per_execution(per_call)
        clock = EpochClock()
        ticks = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: clock.mark())
        prepared.gan.fit(training_pipeline(prepared.source, prepared.per_step, 0),
                         epochs=args.epochs, steps_per_epoch=prepared.steps_per_epoch,
                         callbacks=[ticks], verbose=0)
        return clock.per_epoch(), prepared.steps_per_epoch

    def full(without=(), **flags) -> tuple[float, float]:
        clock = EpochClock()
        # The checkpoint callback is the last of an epoch's callbacks: mark after it.
        on_epoch_end = checkpoints.CheckpointCallback.on_epoch_end

        def marked(self, epoch, logs=None):
            on_epoch_end(self, epoch, logs)
            clock.mark()

        with replaced([(checkpoints.CheckpointCallback, "on_epoch_end", marked), *without]):
            run(config(**flags), plugins, verbose=0)
        return clock.per_epoch(), None

    def nothing(*args, **kwargs):
        return None

    default = keras.callbacks.Callback.on_train_batch_end  # Keras skips callbacks that keep it
    variants = {"bare step": bare, "full run": full}
    prepared = prepare(resolve(config(), plugins))
    per_call = steps_per_call(prepared.config, prepared.steps_per_epoch, 0)
    del prepared
    if per_call > 1:
        variants[f"bare step, {per_call} per call"] = lambda: bare(per_call)
        variants["full run, one step per call"] = lambda: full(steps_per_execution=1)
    if args.parts:
        variants.update({
            "full run without per-step callbacks": lambda: full(
                [(cls, "on_train_batch_end", default) for cls in (
                    callbacks.MlflowLogger, callbacks.DivergenceGuard, callbacks.TrackingWatch,
                    checkpoints.CheckpointCallback)]),
            "full run without sample grids": lambda: full(
                [(callbacks.MlflowLogger, "_write_grid", nothing)]),
            "full run without checkpoints": lambda: full(
                [(checkpoints.CheckpointCallback, "save", nothing)]),
            "full run without MLflow sends": lambda: full([(outbox, "send", nothing)]),
            "full run without its journal": lambda: full(
                [(journal.Journal, "append", nothing), (journal.Journal, "delivered", nothing)]),
        })

    results = {name: [] for name in variants}
    steps = None
    for round_ in range(args.rounds):
        for name, variant in variants.items():
            per_epoch, spe = variant()
            steps = spe or steps
            results[name].append(per_epoch)
            print(f"round {round_ + 1}: {name}: {per_epoch[0]:.2f} s wall, "
                  f"{per_epoch[1]:.2f} s CPU per epoch", flush=True)

    precision = resolve_precision(config().precision)
    print(f"\n{args.recipe} ({precision}), {steps} steps per epoch ({per_call} per call in "
          f"the run), epochs 2-{args.epochs} of each run, "
          f"{args.rounds} rounds; steps per second, median (min-max):\n")
    print("| variant | steps/s wall | ratio | steps/CPU-s | ratio |")
    print("|---|---|---|---|---|")
    base = None
    for name, values in results.items():
        wall = [steps / w for w, _ in values]
        cpu = [steps / c for _, c in values]
        medians = statistics.median(wall), statistics.median(cpu)
        base = base or medians
        print(f"| {name} | {medians[0]:.1f} ({min(wall):.1f}-{max(wall):.1f}) | "
              f"{medians[0] / base[0]:.2f} | {medians[1]:.1f} ({min(cpu):.1f}-{max(cpu):.1f}) | "
              f"{medians[1] / base[1]:.2f} |")


@contextlib.contextmanager
def replaced(attributes):
    """Set (object, name, value) attributes for the block, then put the old ones back."""
    with contextlib.ExitStack() as stack:
        for owner, name, value in attributes:
            stack.enter_context(mock.patch.object(owner, name, value))
        yield


if __name__ == "__main__":
    main()
