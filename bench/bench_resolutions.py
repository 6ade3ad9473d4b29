"""The dcgan recipe on your own images at 64 and 128 pixels: a generated folder
(``bench/make_images.py --size S``, the same scenes at each size) prepared, trained on with
FID along the way, and the step timed.

    python bench/bench_resolutions.py                       # 64 and 128 px (about an hour)
    python bench/bench_resolutions.py --sizes 64 --steps 400 --every 100
    python bench/bench_resolutions.py --table-only          # the table and plot of the runs made
    python bench/bench_resolutions.py --sizes 64 --run-args="--regularizer r1:gamma=0.08"
    python bench/bench_resolutions.py --digits              # the bundled digits, upsampled

For each size S:
- ``make_images.py DIR -n --count --size S``, then ``ganflow prepare DIR P --resolution S``;
- ``ganflow run --plugin dcgan --dataset prepared:P`` for ``--steps`` steps in epochs of
  ``--every`` steps, evaluated at every epoch's end (FID, KID, precision/recall: the run's
  default features, the classifier trained on the dataset's 4 shape labels, its default
  samples), in a store of its own; the run's wall and CPU seconds;
- then, in one process, the recipe's training step on each prepared set timed by
  ``bench/bench_step.py --dataset`` (warm-up, then windows alternating between the sizes).

Prints the table (FID at the end and its best, the run's time) and the step timings, and
draws the FID curves of the sizes into ``--plot``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def ganflow(*args: str) -> tuple[float, float]:
    """Run ``ganflow ARGS``; its (wall seconds, CPU seconds of it and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ganflow", *args], capture_output=True,
                          text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"ganflow {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--count", type=int, default=10_000, help="images per folder")
    parser.add_argument("--steps", type=int, default=2000, help="training steps a run")
    parser.add_argument("--every", type=int, default=200, help="steps between evaluations")
    parser.add_argument("--work", default="bench-resolutions", help="where the folders go")
    parser.add_argument("--plot", default="fid-by-resolution.png")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--digits", action="store_true", help="the bundled digits (a folder "
                        "of 1,797 8x8 PNGs, make_images.py --digits) instead of the shapes")
    parser.add_argument("--run-args", default="", help="more flags for ganflow run, in one "
                        "string (each run's experiment is named after them)")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    store = f"sqlite:///{work / 'runs.db'}"
    seconds, extra = {}, shlex.split(args.run_args)
    suffix = (" digits" if args.digits else "") + (f" {args.run_args}" if extra else "")
    if not args.table_only:
        for size in args.sizes:
            kind = "digits" if args.digits else "images"
            images, prepared = work / f"{kind}-{size}", work / f"prepared-{kind}-{size}"
            if not images.exists():
                subprocess.run([sys.executable, str(HERE / "make_images.py"), str(images),
                                *(["--digits"] if args.digits else
                                  ["-n", str(args.count), "--size", str(size)])], check=True)
            if not (prepared / "manifest.json").exists():
                ganflow("prepare", str(images), str(prepared), "--resolution", str(size))
            seconds[size] = ganflow(
                "run", "--plugin", "dcgan", "--dataset", f"prepared:{prepared}",
                "--epochs", str(args.steps // args.every), "--steps-per-epoch", str(args.every),
                "--eval-every", "1", "--no-register", "-q", "--tracking-uri", store,
                "--output-dir", str(work / "runs"), "--experiment", f"dcgan-{size}px{suffix}",
                *extra)
            import mlflow

            client = mlflow.MlflowClient(store)
            run = latest_run(client, f"dcgan-{size}px{suffix}")
            client.set_tag(run.info.run_id, "bench.cpu_s", f"{seconds[size][1]:.0f}")
            print(f"{size} px: {args.steps} steps and their evaluations in "
                  f"{seconds[size][0]:.0f} s ({seconds[size][1]:.0f} CPU-s)", file=sys.stderr,
                  flush=True)
        subprocess.run([sys.executable, str(HERE / "bench_step.py"), "--precision", "auto",
                        "--jit", "off", "--repeats", "5", "--steps", "20",
                        "--dataset", *(f"prepared:{work / f'prepared-{kind}-{s}'}"
                                       for s in args.sizes)],
                       check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    table(store, args.sizes, args.plot, suffix)


def table(store: str, sizes: list[int], plot: str, suffix: str = "") -> None:
    import mlflow

    client = mlflow.MlflowClient(store)
    runs = {size: latest_run(client, f"dcgan-{size}px{suffix}") for size in sizes}
    print("\n| size | images | steps | ms/step in the run | FID at the end | best FID (at step) | "
          "KID x 1000 | precision | recall | run, s (CPU-s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    curves = {}
    for size in sizes:
        run = runs.get(size)
        if run is None:
            continue
        history = sorted((m.step, m.value) for m in
                         client.get_metric_history(run.info.run_id, "eval/fid"))
        curves[size] = history
        best = min(history, key=lambda point: point[1])
        metrics, params = run.data.metrics, run.data.params
        took = (run.info.end_time - run.info.start_time) / 1000
        print(f"| {size} px | {int(params['data_size']):,} | {history[-1][0]:,} | "
              f"{step_ms(client, run):.0f} | "
              f"{history[-1][1]:.2f} | {best[1]:.2f} ({best[0]:,}) | "
              f"{metrics['eval/kid'] * 1000:.2f} | {metrics['eval/precision']:.2f} | "
              f"{metrics['eval/recall']:.2f} | {took:.0f} ({run.data.tags.get('bench.cpu_s', '?')}) |")
    if curves:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, ax = plt.subplots(figsize=(6, 3.5))
        for size, history in curves.items():
            steps, fids = zip(*history)
            ax.plot(steps, fids, marker="o", label=f"{size} px")
        ax.set_xlabel("training step (batch 32)")
        ax.set_ylabel("FID (classifier features)")
        ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(plot, dpi=100)
        print(f"\nFID curves: {plot}")


def latest_run(client, experiment_name: str):
    """The newest run of the experiment, or None when there is none."""
    experiment = client.get_experiment_by_name(experiment_name)
    found = experiment and client.search_runs([experiment.experiment_id],
                                              order_by=["start_time DESC"], max_results=1)
    return found[0] if found else None


def step_ms(client, run) -> float:
    """The run's own time per training step: the median, over its metric windows that hold
    no evaluation or sample grid, of the time between two windows' logs per step."""
    import statistics

    every = int(run.data.params["steps_per_epoch"])
    logged = sorted((m.step, m.timestamp) for m in
                    client.get_metric_history(run.info.run_id, "d_loss"))
    return statistics.median((t2 - t1) / (s2 - s1) for (s1, t1), (s2, t2) in
                             zip(logged, logged[1:]) if (s1 - 1) // every == (s2 - 1) // every)


if __name__ == "__main__":
    main()
