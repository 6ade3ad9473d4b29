"""The architecture table: each image recipe on the digits (dcgan, sngan, biggan, stylegan2),
at its own defaults, which are sized to cost about the same CPU time, several seeds; FID, KID,
precision, recall and class coverage (and class accuracy for the conditional ones) from each
run's own last evaluation (the digit classifier's features, 10,000 samples), and each run's
wall and CPU seconds, so the reader sees the rows' budgets.

    python bench/arch_table.py                            # every row, seeds 0 1 2 (hours)
    python bench/arch_table.py --recipes stylegan2 --seeds 0
    python bench/arch_table.py --table-only               # the table of the runs made

Each cell is one real ``ganflow run --plugin RECIPE --seed S`` in its own process, tracked in
the MLflow experiment ``ganflow-arch-table`` (``--tracking-uri``, default
``sqlite:///arch-table.db``); a cell already in the store is not run again.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

RECIPES = ("dcgan", "sngan", "biggan", "stylegan2")
METRICS = ("fid", "kid", "precision", "recall", "class_coverage", "class_accuracy")
EXPERIMENT = "ganflow-arch-table"


def cell_run(client, experiment_id: str, recipe: str, seed: int):
    from cells import finished_run

    return finished_run(client, experiment_id, "arch_table_key", f"{recipe}|{seed}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--tracking-uri", default="sqlite:///arch-table.db")
    parser.add_argument("--table-only", action="store_true", help="run nothing; print the table")
    args = parser.parse_args()

    import mlflow

    from cells import experiment_id, mean_std, run_cell

    mlflow.set_tracking_uri(args.tracking_uri)
    client = mlflow.MlflowClient()
    experiment = experiment_id(client, EXPERIMENT)
    for recipe in [] if args.table_only else args.recipes:
        for seed in args.seeds:
            if not cell_run(client, experiment, recipe, seed):
                run_cell(client, ["--plugin", recipe, "--seed", str(seed)],
                         tracking_uri=args.tracking_uri, experiment=EXPERIMENT,
                         prefix="arch_table", tags={"arch_table_key": f"{recipe}|{seed}"},
                         label=f"{recipe}, seed {seed}")

    print(f"\nEach recipe at its defaults on the digits, seeds "
          f"{', '.join(map(str, args.seeds))}: mean (std) at the last evaluation\n")
    print("| recipe | " + " | ".join(METRICS) + " | s per run | CPU-s per run | runs |")
    print("|---" * (len(METRICS) + 4) + "|")
    for recipe in args.recipes:
        runs = [r for seed in args.seeds if (r := cell_run(client, experiment, recipe, seed))]
        cells = [mean_std([r.data.metrics[f"eval/{name}"] for r in runs
                           if f"eval/{name}" in r.data.metrics]) for name in METRICS]
        seconds = [float(r.data.tags["arch_table_seconds"]) for r in runs]
        cpu = [float(r.data.tags["arch_table_cpu_seconds"]) for r in runs]
        print(f"| `{recipe}` | " + " | ".join(cells) + f" | {mean_std(seconds, 0)} | "
              f"{mean_std(cpu, 0)} | {len(runs)} |")


if __name__ == "__main__":
    main()
