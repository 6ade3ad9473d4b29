"""Your own images at scale: a generated folder of N images (64x64 shapes and textures, 2%
broken, ``bench/make_images.py``) prepared, then trained on as a stream; for each N, what it
costs in time and memory.

    python bench/bench_prepared.py                          # N = 10,000 and 100,000 (~12 min)
    python bench/bench_prepared.py --sizes 10000 --steps 100
    python bench/bench_prepared.py --work /data/bench       # where the folders go (GBs)

For each N, every step a process of its own, its peak memory the largest resident set of it and
the processes it started (``wait4``'s ``ru_maxrss``):
- ``make_images.py``: the folder (kept in ``--work`` and reused);
- ``ganflow prepare``: images/s over its wall time, peak memory;
- ``ganflow run --plugin dcgan --dataset prepared:P --cache none`` for ``--steps`` steps at the
  recipe's batch, evaluated before and after as the recipe does (FID on 10,000 samples against
  10,000 real images drawn from the whole set, the domain classifier trained on a bounded
  sample of it): peak memory, FID, and the run's own two rates, what its input
  pipeline gives alone before training (tag ``ganflow.input_examples_per_s``) and what training
  took (``ganflow.train_examples_per_s``), with their ratio. The bars (issue 26): training's
  memory does not grow with N beyond the shuffle buffer and stays under 3 GB at 64 px, and the
  pipeline gives at least twice what training takes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measured(command: list[str], **kwargs) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, peak resident GB of it and what it started, the finished process)."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)
    out, err = proc.communicate()
    seconds = time.perf_counter() - started
    # communicate() reaped it; the children's high-water mark is the largest process's
    import resource

    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # kB -> GB
    if proc.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{err[-3000:]}")
    return seconds, peak, subprocess.CompletedProcess(command, proc.returncode, out, err)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000])
    parser.add_argument("--steps", type=int, default=300, help="training steps a run")
    parser.add_argument("--work", default="bench-prepared", help="where the folders go")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.sizes:
        images, prepared = work / f"images-{n}", work / f"prepared-{n}"
        if not images.exists():
            subprocess.run([sys.executable, str(HERE / "make_images.py"), str(images), "-n",
                            str(n)], check=True)
        shutil.rmtree(prepared, ignore_errors=True)
        # Each measured step in a fresh interpreter of its own, so that RUSAGE_CHILDREN's
        # high-water mark is that step's: the measuring runs in a child that reports it.
        prep = child(["prepare", str(images), str(prepared), "--resolution", "64"])
        store = work / f"runs-{n}.db"
        store.unlink(missing_ok=True)
        train = child(["run", "--plugin", "dcgan", "--dataset", f"prepared:{prepared}",
                       "--cache", "none", "--epochs", "1", "--steps-per-epoch", str(args.steps),
                       "--eval-every", "1", "--no-register", "-q", "--tracking-uri",
                       f"sqlite:///{store}", "--output-dir", str(work / "runs")])
        import mlflow

        client = mlflow.MlflowClient(f"sqlite:///{store}")
        (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
        alone = float(run.data.tags["ganflow.input_examples_per_s"])
        took = float(run.data.tags["ganflow.train_examples_per_s"])
        kept = int(run.data.params["data_size"])
        fid = run.data.metrics["eval/fid"]
        rows.append((n, kept, kept / prep[0], prep[1], train[1], alone, took, fid))
        print(f"N = {n:,}: prepared {kept:,} in {prep[0]:.0f} s, trained {args.steps} steps in "
              f"{train[0]:.0f} s", file=sys.stderr, flush=True)
    print("\n| images | kept | prepare, images/s | prepare, peak GB | training, peak GB | "
          "pipeline alone, images/s | training took, images/s | ratio | FID at the end |")
    print("|---" * 9 + "|")
    for n, kept, rate, prep_gb, train_gb, alone, took, fid in rows:
        print(f"| {n:,} | {kept:,} | {rate:,.0f} | {prep_gb:.2f} | {train_gb:.2f} | "
              f"{alone:,.0f} | {took:,.0f} | {alone / took:.1f}x | {fid:.1f} |")


def child(ganflow_args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak GB) of ``ganflow ARGS``, measured from a fresh Python process."""
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]); from bench_prepared import "
            "measured; s, gb, _ = measured([sys.executable, '-m', 'ganflow', *sys.argv[2:]]); "
            "print(json.dumps([s, gb]))")
    out = subprocess.run([sys.executable, "-c", code, str(HERE), *ganflow_args], check=True,
                         capture_output=True, text=True, env={**os.environ,
                                                               "TF_CPP_MIN_LOG_LEVEL": "3"})
    import json

    seconds, peak = json.loads(out.stdout.strip().splitlines()[-1])
    return seconds, peak


if __name__ == "__main__":
    main()
