"""The loss table: the dcgan recipe on the digits with each loss (and spectral norm or R1 where
they are usual), several seeds, scored by the recipe's own evaluation (FID, KID, precision,
recall, class coverage on classifier features, 10,000 samples).

    python bench/loss_table.py                         # every row, seeds 0 1 2 (about 70 min)
    python bench/loss_table.py --rows hinge hinge+sn --seeds 0
    python bench/loss_table.py --table-only            # the table of the runs already made
    python bench/loss_table.py --rows "non-saturating + R1" --precision mixed_bfloat16

Each cell is one real ``ganflow run`` in its own process, tracked in the MLflow experiment
``ganflow-loss-table`` (``--tracking-uri``, default ``sqlite:///loss-table.db`` here), so the
whole table can be browsed in the UI. A cell already in the store is not run again. Prints a
Markdown table: mean and standard deviation over the seeds of each metric after the last
epoch.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

from cells import mean_std  # noqa: E402

# row name -> ganflow run flags on top of the recipe's.
ROWS = {
    "non-saturating": ["--loss", "non-saturating"],
    "non-saturating + SN": ["--loss", "non-saturating", "--arch", "dcgan:sn"],
    "non-saturating + R1": ["--loss", "non-saturating", "--regularizer", "r1:gamma=1"],
    "minimax": ["--loss", "minimax"],
    "hinge": ["--loss", "hinge"],
    "hinge + SN": ["--loss", "hinge", "--arch", "dcgan:sn"],
    "wgan (gp=10)": ["--loss", "wgan:gp=10"],
    "lsgan": ["--loss", "lsgan"],
    # Why spectral norm did badly (docs/losses.md): Keras update, then one change each.
    "non-saturating + SN, Keras update": ["--loss", "non-saturating",
                                            "--arch", "dcgan:sn,sigma_grad=false"],
    "hinge + SN, Keras update": ["--loss", "hinge", "--arch", "dcgan:sn,sigma_grad=false"],
    "non-saturating + SN (Keras), Adam beta (0, 0.9)": [
        "--loss", "non-saturating", "--arch", "dcgan:sn,sigma_grad=false",
        "--optimizer", "adam:beta1=0,beta2=0.9"],
    "non-saturating + SN (Keras), TTUR (D 4e-4, G 1e-4)": [
        "--loss", "non-saturating", "--arch", "dcgan:sn,sigma_grad=false",
        "--lr-d", "4e-4", "--lr-g", "1e-4"],
    "hinge + SN (Keras), SNGAN Adam and k = 5": [
        "--loss", "hinge", "--arch", "dcgan:sn,sigma_grad=false",
        "--optimizer", "adam:beta1=0,beta2=0.9", "--d-steps", "5"],
}
METRICS = ("fid", "kid", "precision", "recall", "class_coverage", "class_accuracy")
EXPERIMENT = "ganflow-loss-table"


def cell_runs(client, experiment_id, row: str, seed: int, epochs: int, recipe: str,
              precision: str):
    return [r for r in client.search_runs([experiment_id], f"tags.loss_table_row = '{row}'")
            if r.data.params.get("seed") == str(seed) and r.info.status == "FINISHED"
            and r.data.params.get("epochs") == str(epochs)
            and r.data.params.get("recipe") == recipe
            and r.data.params.get("precision", "float32") == precision]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), metavar="ROW",
                        help=f"rows to run, of: {', '.join(ROWS)}")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--recipe", default="dcgan")
    parser.add_argument("--precision", default="float32",
                        help="the runs' --precision (float32, mixed_bfloat16, ...)")
    parser.add_argument("--tracking-uri", default="sqlite:///loss-table.db")
    parser.add_argument("--table-only", action="store_true", help="run nothing; print the table")
    args = parser.parse_args()
    unknown = [row for row in args.rows if row not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {list(ROWS)}")

    import mlflow

    mlflow.set_tracking_uri(args.tracking_uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT) or client.get_experiment(
        client.create_experiment(EXPERIMENT))
    if not args.table_only:
        for row in args.rows:
            for seed in args.seeds:
                if cell_runs(client, experiment.experiment_id, row, seed, args.epochs,
                             args.recipe, args.precision):
                    continue
                # A row without a regularizer has none, whatever the recipe's (R1 since).
                bare = [] if "--regularizer" in ROWS[row] else ["--regularizer", "none"]
                command = [sys.executable, "-m", "ganflow", "run", "--plugin", args.recipe,
                           *ROWS[row], *bare, "--seed", str(seed), "--epochs", str(args.epochs),
                           "--eval-every", str(args.epochs), "--precision", args.precision,
                           "--no-register", "-q",
                           "--tracking-uri", args.tracking_uri, "--experiment", EXPERIMENT]
                started = time.perf_counter()
                proc = subprocess.run(command, capture_output=True, text=True)
                seconds = time.perf_counter() - started
                if proc.returncode:
                    print(f"{row}, seed {seed}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                    continue
                run_id = proc.stdout.split("Run ", 1)[1].split()[0]
                client.set_tag(run_id, "loss_table_row", row)
                fid = client.get_run(run_id).data.metrics.get("eval/fid")
                print(f"{row}, seed {seed}: FID {fid:.2f} in {seconds:.0f} s", flush=True)

    print(f"\n{args.recipe} on the digits, {args.precision}, {args.epochs} epochs, seeds "
          f"{', '.join(map(str, args.seeds))}: mean (std) after the last epoch\n")
    print("| loss | " + " | ".join(METRICS) + " | D's loss, last epoch | runs |")
    print("|---" * (len(METRICS) + 3) + "|")
    for row in args.rows:
        runs = [r for seed in args.seeds
                for r in cell_runs(client, experiment.experiment_id, row, seed, args.epochs,
                                   args.recipe, args.precision)[:1]]
        # The scores, and D's loss (2 ln 2 = 1.39 where it cannot tell real from fake)
        cells = [mean_std([r.data.metrics[key] for r in runs if key in r.data.metrics])
                 for key in (*(f"eval/{name}" for name in METRICS), "epoch/mean_d_loss")]
        print(f"| {row} | " + " | ".join(cells) + f" | {len(runs)} |")


if __name__ == "__main__":
    main()
