"""The mode-collapse benchmark: methods x toy datasets x seeds, scored as PacGAN (Lin et al.
2018, Table 1) scores them, beside ganflow's own stricter mode count.

    python bench/bench_modes.py --jobs 2      # docs/toy.md's table, 10 seeds: 105 min on 2 cores
    python bench/bench_modes.py --seeds 3 --methods gan pacgan4 --datasets grid25
    python bench/bench_modes.py --fresh --methods toy-grid --datasets grid25 --jobs 2
    python bench/bench_modes.py --table-only  # the table of the runs already made

Methods (every one is a real ``ganflow run``, in this process or a worker's):
- ``gan``, ``pacgan2``, ``pacgan3``, ``pacgan4``: the ``toy-grid`` recipe's networks and
  settings with D judging packs of 1 (a plain GAN), 2, 3 or 4 examples, trained for
  as many generator updates as the recipe (16,000), so that packing is the only difference;
  ``--budget N`` trains them for N updates instead (in epochs of 100), for a cheaper table.
- ``hinge``: the ``toy-grid`` recipe with the hinge loss (from ganflow's loss library) instead
  of the non-saturating one, as long (or ``--budget``).
- ``toy-grid``: the ``toy-grid`` recipe itself, unchanged but for the dataset.
- ``toy`` (not run by default): the ``toy`` recipe, unchanged but for the dataset.

Metrics, from the run's last epoch (the EMA generator when the run keeps one):
- PacGAN's, on 2,500 samples: modes with at least one high-quality sample, the share of
  high-quality samples (within 3 std of a centre), the reverse KL of the high-quality samples'
  mode histogram to uniform (``toy/pacgan_*`` in the run);
- ganflow's stricter mode count, on 10,000 samples: modes holding at least 1% of them
  (``toy/modes_captured``).

Each training run is tracked in the MLflow experiment ``modes-benchmark`` (``--tracking-uri``,
default ``sqlite:///modes-benchmark.db`` here) with the tags ``bench.method``,
``bench.dataset`` and ``bench.seed``, nested under one parent run per table cell that holds
the cell's mean and standard error. A run is keyed by everything in its resolved settings that
can change what it learns (tag ``bench.key``), so a run already in the store is not trained
again: ``pacgan2`` at the recipe's length is the ``toy-grid`` recipe and shares its runs, and
runs made before the recipe changed are never taken for today's. The Markdown table goes to
stdout and to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import math
import os
import secrets
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

from cells import fmt, mean_se  # noqa: E402

EXPERIMENT = "modes-benchmark"
DATASETS = ("ring8", "grid25")
PACKS = {"gan": 1, "pacgan2": 2, "pacgan3": 3, "pacgan4": 4}
LOSSES = {"hinge": "hinge"}  # method -> the --loss the recipe trains with instead
RECIPES = ("toy-grid", "toy")
METHODS = (*PACKS, *LOSSES, *RECIPES)
DEFAULT_METHODS = (*PACKS, "hinge", "toy-grid")
LABELS = {"gan": "GAN", "pacgan2": "PacGAN2", "pacgan3": "PacGAN3", "pacgan4": "PacGAN4",
          "hinge": "`toy-grid`, hinge loss"}
# (column, metric of the run, digits, scale): PacGAN's three, then ganflow's count.
COLUMNS = (
    ("modes (PacGAN)", "toy/pacgan_modes", 1, 1.0),
    ("high quality % (PacGAN)", "toy/pacgan_hq", 1, 100.0),
    ("reverse KL (PacGAN)", "toy/pacgan_reverse_kl", 3, 1.0),
    ("modes >= 1% (ganflow)", "toy/modes_captured", 1, 1.0),
)
SECONDS = "bench/seconds"
# RunConfig fields that say where a run is tracked and saved, not what it learns.
BOOKKEEPING = {"seed", "recipe", "tracking_uri", "tracking_timeout", "experiment", "register",
               "registered_model", "output_dir", "plugin_modules", "checkpoint_every",
               "keep_checkpoints", "checkpoint_to_mlflow", "log_every", "disable_plugins"}


def training_key(config) -> str:
    """A short hash of the settings of ``config`` (a resolved RunConfig) that can change what
    the run learns: two cells whose flags differ but resolve to the same training share it."""
    from ganflow.config import FIELDS

    learned = {name: getattr(config, name) for name in FIELDS if name not in BOOKKEEPING}
    return hashlib.sha256(json.dumps(learned, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cell_flags(method: str, dataset: str, budget: int | None, plugins) -> tuple[str, dict]:
    """The recipe and the flags on top of it that one cell's runs train with: the gan/pacgan
    methods are ``toy-grid`` with another pack, a loss method ``toy-grid`` with that loss, for
    the recipe's own length (``budget`` None) or ``budget`` updates in epochs of 100."""
    if method in RECIPES:
        return method, {"dataset": dataset}
    recipe = plugins.recipes.get("toy-grid").obj
    if method in LOSSES:
        flags = {"dataset": dataset, "loss": LOSSES[method]}
    else:
        sizes, _, options = recipe["arch"].partition(":")[2].partition("/")
        kept = [o for o in options.split("/") if o and not o.startswith("pack=")]
        flags = {"dataset": dataset,
                 "arch": f"mlp:{'/'.join([sizes, f'pack={PACKS[method]}', *kept])}"}
    if budget is not None and budget != recipe["epochs"] * recipe["steps_per_epoch"]:
        steps = 100
        flags.update({"epochs": max(1, budget // steps), "steps_per_epoch": steps})
    return "toy-grid", flags


def seed_runs(client, experiment_id: str, key: str) -> dict:
    """seed -> the finished run already in the store that trained with these settings."""
    found = {}
    for run in client.search_runs(
            [experiment_id], f"tags.`bench.key` = '{key}' and attributes.status = 'FINISHED'",
            max_results=1000):
        if "bench.seed" in run.data.tags:  # not the cell's own run
            found.setdefault(int(run.data.tags["bench.seed"]), run)
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, metavar="N",
                        help="seeds 0..N-1 per cell (default 10)")
    parser.add_argument("--fresh", action="store_true",
                        help="N seeds drawn now at random instead of 0..N-1 (the recipes were "
                        "tuned on small seeds), printed and kept in the runs' tags")
    parser.add_argument("--seed-list", type=int, nargs="+", metavar="SEED",
                        help="these seeds instead (e.g. the fresh ones of an earlier run, to "
                        "print its table again)")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="METHOD",
                        help=f"of: {', '.join(METHODS)} (default: all but toy)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), metavar="DATASET",
                        help=f"of: {', '.join(DATASETS)}")
    parser.add_argument("--budget", type=int, default=None, metavar="UPDATES",
                        help="generator updates of the gan/pacgan methods (default: the "
                        "toy-grid recipe's own, 16,000)")
    parser.add_argument("--out", default="modes-benchmark.md", metavar="FILE",
                        help="where the Markdown table is written (default modes-benchmark.md)")
    parser.add_argument("--tracking-uri", default="sqlite:///modes-benchmark.db")
    parser.add_argument("--output-dir", default="ganflow-runs", metavar="DIR",
                        help="the runs' checkpoints and pictures")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="train N runs at once, in worker processes that share the cores "
                        "(a toy run keeps about one core busy: 2 on 2 cores)")
    parser.add_argument("--table-only", action="store_true",
                        help="train nothing; the table (and the cells' runs) of the runs "
                        "already in the store")
    args = parser.parse_args(argv)
    for name, given, known in (("--methods", args.methods, METHODS),
                               ("--datasets", args.datasets, DATASETS)):
        unknown = [v for v in given if v not in known]
        if unknown:
            parser.error(f"{name}: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    if args.seeds < 1 or args.jobs < 1 or (args.budget is not None and args.budget < 100):
        parser.error("--seeds and --jobs must be at least 1 and --budget at least 100")
    if args.fresh and args.table_only:
        parser.error("--fresh draws seeds to train: not with --table-only")
    seeds = (sorted({secrets.randbelow(1_000_000) + 1000 for _ in range(args.seeds)})
             if args.fresh else args.seed_list or list(range(args.seeds)))
    if args.fresh:
        print(f"fresh seeds: {' '.join(map(str, seeds))}", file=sys.stderr, flush=True)

    import mlflow

    from ganflow.resolve import configure

    plugins = loaded_plugins()
    mlflow.set_tracking_uri(args.tracking_uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = (experiment.experiment_id if experiment
                     else client.create_experiment(EXPERIMENT))
    started = time.perf_counter()
    cells, jobs = [], {}
    for dataset in args.datasets:
        for method in args.methods:
            recipe, flags = cell_flags(method, dataset, args.budget, plugins)
            settings = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in flags.items()
                                if k != "dataset")
            settings = f"--plugin {recipe}" + (f" {settings}" if settings else "")
            common = {**flags, "register": False, "tracking_uri": args.tracking_uri,
                      "experiment": EXPERIMENT, "output_dir": args.output_dir}
            key = training_key(configure(plugins, recipe, common))
            cells.append((method, dataset, recipe, settings, key))
            done = seed_runs(client, experiment_id, key)
            for seed in seeds:
                if seed not in done and not args.table_only:  # a run two cells share, once
                    jobs.setdefault((key, seed), Job(method, dataset, recipe, common, seed,
                                                     settings, key))
    if jobs:
        train_all(list(jobs.values()), args.jobs)
    rows = []
    for method, dataset, recipe, settings, key in cells:
        done = seed_runs(client, experiment_id, key)
        runs = [done[s] for s in seeds if s in done]
        if runs:
            rows.append((method, dataset, recipe, settings, runs))
            log_cell(client, experiment_id, method, dataset, settings, key, runs)
    table = render(rows, args)
    Path(args.out).write_text(table, encoding="utf-8")
    print(table)
    print(f"(table in {args.out}; {time.perf_counter() - started:.0f} s in all)", file=sys.stderr)
    return 0


@dataclasses.dataclass(frozen=True)
class Job:
    """One seed of one cell to train."""

    method: str
    dataset: str
    recipe: str
    flags: dict
    seed: int
    settings: str
    key: str


def train_all(jobs: list[Job], processes: int) -> None:
    """Train the jobs, in this process or in ``processes`` worker processes at once (each
    with its share of the CPU's threads); a job's line is printed as it ends."""
    if processes == 1:
        for job in jobs:
            print(train(job), flush=True)
        return
    import concurrent.futures
    import multiprocessing

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the workers import this file
    threads = max(1, (os.cpu_count() or 1) // processes)
    with concurrent.futures.ProcessPoolExecutor(
            processes, mp_context=multiprocessing.get_context("spawn"),
            initializer=share_cpu, initargs=(threads,)) as pool:
        futures = [pool.submit(train, job) for job in jobs]
        try:
            for line in concurrent.futures.as_completed(futures):
                print(line.result(), flush=True)
        except BaseException:  # an interrupted run: start no other
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def share_cpu(threads: int) -> None:
    """A worker process's TensorFlow threads: its share of the cores."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


@functools.cache
def loaded_plugins():
    """ganflow's plugins, discovered once per process (the main one, or a worker for all its
    jobs)."""
    from ganflow.plugins import load_plugins

    return load_plugins()


def train(job: Job) -> str:
    """Train one seed of a cell as ``ganflow run`` would, tag its run; its line for the log."""
    import mlflow

    from ganflow.resolve import configure
    from ganflow.runner import run

    plugins = loaded_plugins()
    config = configure(plugins, job.recipe, {**job.flags, "seed": job.seed})
    result = run(config, plugins, verbose=0)
    if result.interrupted:  # its checkpoint is kept, its run is not finished: not counted
        raise KeyboardInterrupt(f"{job.method} {job.dataset} seed {job.seed} was interrupted")
    client = mlflow.MlflowClient(config.tracking_uri)
    for tag, value in {"bench.method": job.method, "bench.dataset": job.dataset,
                       "bench.seed": str(job.seed), "bench.settings": job.settings,
                       "bench.key": job.key}.items():
        client.set_tag(result.run_id, tag, value)
    client.log_param(result.run_id, "method", job.method)
    client.log_metric(result.run_id, SECONDS, result.seconds)
    m = result.metrics
    return (f"{job.method} {job.dataset} seed {job.seed}: modes {m['toy/pacgan_modes']:.0f}, "
            f"hq {m['toy/pacgan_hq']:.3f}, reverse KL {m['toy/pacgan_reverse_kl']:.3f}, "
            f"ganflow modes {m['toy/modes_captured']:.0f} in {result.seconds:.0f} s")


def log_cell(client, experiment_id: str, method: str, dataset: str, settings: str, key: str,
             runs):
    """One parent run per cell (made once, updated as seeds are added): the mean and standard
    error of every column over its seeds, whose runs are nested under it in the UI (a run
    that two cells share, pacgan2 and the recipe, is nested under the last)."""
    tags = {"bench.method": method, "bench.dataset": dataset, "bench.cell": "true",
            "bench.key": key}
    found = client.search_runs([experiment_id], " and ".join(
        f"tags.`{k}` = '{v}'" for k, v in tags.items()), max_results=1)
    if found:
        run_id = found[0].info.run_id
    else:
        run_id = client.create_run(experiment_id, run_name=f"{method} on {dataset}",
                                   tags=tags).info.run_id
        client.log_param(run_id, "method", method)
        client.log_param(run_id, "dataset", dataset)
        client.log_param(run_id, "settings", settings)
    client.log_metric(run_id, "bench/seeds", len(runs))
    for _, metric, _, _ in (*COLUMNS, ("", SECONDS, 0, 1.0)):
        mean, se = mean_se([r.data.metrics.get(metric, math.nan) for r in runs])
        if not math.isnan(mean):
            client.log_metric(run_id, f"{metric}_mean", mean)
        if not math.isnan(se):
            client.log_metric(run_id, f"{metric}_se", se)
    for r in runs:
        client.set_tag(r.info.run_id, "mlflow.parentRunId", run_id)
    client.set_terminated(run_id)


def render(rows, args) -> str:
    lines = ["| method | dataset | " + " | ".join(c[0] for c in COLUMNS)
             + " | worst seed's high quality % | seeds | s per run | settings |",
             "|---" * (len(COLUMNS) + 6) + "|"]
    for method, dataset, recipe, settings, runs in rows:
        cells = []
        for _, metric, digits, scale in COLUMNS:
            mean, se = mean_se([r.data.metrics.get(metric, math.nan) * scale for r in runs])
            cells.append(fmt(mean, se, digits))
        worst = min(r.data.metrics.get("toy/pacgan_hq", math.nan) for r in runs)
        cells.append(f"{100 * worst:.1f}")
        seconds, _ = mean_se([r.data.metrics.get(SECONDS, math.nan) for r in runs])
        label = f"`{recipe}` recipe" if method in RECIPES else LABELS[method]
        lines.append(f"| {label} | {dataset} | " + " | ".join(cells)
                     + f" | {len(runs)} | {fmt(seconds, math.nan, 0)} | `{settings}` |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
