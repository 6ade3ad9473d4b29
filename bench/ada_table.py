"""Small datasets: the dcgan recipe on a share of the digits (100%, 30%, 10%, 3%: 1,797, 539,
180 and 54 images) with no augmentation, DiffAugment and ADA, at the same number of real images
shown to D in every row, several seeds; FID and KID on classifier features against the whole
dataset, and each run's FID curve.

    python bench/ada_table.py                        # every row, seeds 0 1 2 (hours on 2 cores)
    python bench/ada_table.py --fractions 0.1 --methods none ada --seeds 0
    python bench/ada_table.py --table-only           # the table (and plot) of the runs made
    python bench/ada_table.py --plot fid-curves.png  # where the smallest share's FID curves go

Every row trains 100 epochs of 56 steps at batch 32 (179,200 real images shown to D, what the
recipe shows on the whole dataset), so an epoch is not a pass over a subset: the shares are
repeated. Each cell is one real ``ganflow run`` in its own process, tracked in the MLflow
experiment ``ganflow-ada-table`` (``--tracking-uri``, default ``sqlite:///ada-table.db``), which
evaluates every 5 epochs on 10,000 samples; a cell already in the store is not run again.
Prints a Markdown table: mean (standard deviation) over the seeds after the last epoch, the
best FID along the way, ADA's final p, and the seconds per run.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

# method -> ganflow run flags on top of the recipe's.
METHODS = {
    "none": [],
    "diffaugment": ["--augment", "color", "--augment", "translation", "--augment", "cutout"],
    "ada": ["--augment", "ada:kimg=100"],
}
# 3% (54 images): where D overfits this recipe, and FID turns back up without augmentation.
FRACTIONS = (1.0, 0.3, 0.1, 0.03)
COLORS = {"none": "tab:gray", "diffaugment": "tab:blue", "ada": "tab:red"}
EXPERIMENT = "ganflow-ada-table"
STEPS_PER_EPOCH, EPOCHS, EVAL_EVERY = 56, 100, 5


def key(method: str, fraction: float, seed: int) -> str:
    return f"{method}|{fraction:g}|{seed}|{' '.join(METHODS[method])}"


def cell_run(client, experiment_id, method: str, fraction: float, seed: int):
    from cells import finished_run

    return finished_run(client, experiment_id, "ada_table_key", key(method, fraction, seed))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--tracking-uri", default="sqlite:///ada-table.db")
    parser.add_argument("--plot", default="fid-curves.png",
                        help="where the FID curves over training of the smallest share go")
    parser.add_argument("--table-only", action="store_true", help="run nothing; print the table")
    args = parser.parse_args()

    import mlflow

    from cells import experiment_id, mean_std, run_cell

    mlflow.set_tracking_uri(args.tracking_uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment(experiment_id(client, EXPERIMENT))
    cells = [(f, m, s) for f in args.fractions for m in args.methods for s in args.seeds]
    for fraction, method, seed in [] if args.table_only else cells:
        if cell_run(client, experiment.experiment_id, method, fraction, seed):
            continue
        run_cell(client, ["--plugin", "dcgan", *METHODS[method], "--seed", str(seed),
                          "--epochs", str(EPOCHS), "--steps-per-epoch", str(STEPS_PER_EPOCH),
                          "--eval-every", str(EVAL_EVERY),
                          *(["--data-fraction", str(fraction)] if fraction < 1 else [])],
                 tracking_uri=args.tracking_uri, experiment=EXPERIMENT, prefix="ada_table",
                 tags={"ada_table_key": key(method, fraction, seed)},
                 label=f"{method}, {fraction:g}, seed {seed}")

    print(f"\ndcgan on a share of the digits, {EPOCHS} epochs of {STEPS_PER_EPOCH} steps, "
          f"seeds {', '.join(map(str, args.seeds))}: mean (std) after the last epoch\n")
    print("| data | method | FID | KID | best FID (epoch) | precision | recall | "
          "ADA's p at the end | s per run | CPU-s per run | runs |")
    print("|---" * 11 + "|")
    curves = {}
    for fraction in args.fractions:
        for method in args.methods:
            runs = [r for s in args.seeds
                    if (r := cell_run(client, experiment.experiment_id, method, fraction, s))]
            histories = [client.get_metric_history(r.info.run_id, "eval/fid") for r in runs]
            best = [min(h, key=lambda m: m.value) for h in histories if h]
            curves[(fraction, method)] = [[(m.step // STEPS_PER_EPOCH, m.value) for m in h]
                                          for h in histories]
            metric = lambda name, scale=1.0: [r.data.metrics[name] * scale for r in runs  # noqa: E731
                                              if name in r.data.metrics]
            print(f"| {fraction:.0%} ({round(fraction * 1797)}) | {method} | "
                  f"{mean_std(metric('eval/fid'))} | {mean_std(metric('eval/kid'))} | "
                  f"{mean_std([m.value for m in best])} "
                  f"({mean_std([m.step / STEPS_PER_EPOCH for m in best], 0)}) | "
                  f"{mean_std(metric('eval/precision'))} | {mean_std(metric('eval/recall'))} | "
                  f"{mean_std(metric('ada/p'), 3) if method == 'ada' else '-'} | "
                  f"{mean_std([float(r.data.tags['ada_table_seconds']) for r in runs], 0)} | "
                  f"{mean_std([float(r.data.tags['ada_table_cpu_seconds']) for r in runs], 0)} | "
                  f"{len(runs)} |")
    smallest = min(args.fractions)
    plotted = {m: c for (f, m), c in curves.items() if f == smallest and c}
    if plotted and args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
        for method, runs in plotted.items():
            for i, curve in enumerate(runs):
                epochs, fids = zip(*curve)
                ax.plot(epochs, fids, color=COLORS[method], alpha=0.8,
                        label=method if i == 0 else None)
        ax.set(yscale="log", xlabel="epoch (56 steps, 1,792 real images)",
               ylabel="FID (classifier features, 10,000 samples)",
               title=f"{smallest:.0%} of the digits ({round(smallest * 1797)} images), "
                     "one line per seed")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"\nFID curves: {args.plot}")


if __name__ == "__main__":
    main()
