"""Stacked MNIST on the digits (``--dataset stacked-digits``, 1,000 modes): a GAN in PacGAN's
two DCGAN settings, unpacked and packed (PacGAN2, PacGAN4), and optionally a ganflow recipe,
several seeds; modes captured and KL(mode histogram || uniform) beside the papers' rows.

    python bench/stacked_table.py                              # every cell, seeds 0-4 (hours)
    python bench/stacked_table.py --settings table2 --methods gan pac2 --seeds 0
    python bench/stacked_table.py --recipe stacked             # and a recipe's rows
    python bench/stacked_table.py --table-only                 # the table of the runs made

The two settings follow PacGAN's code (github.com/fjxmlzn/PacGAN, ``stacked_MNIST_experiments``)
at the scale of 2 CPU cores; what differs is printed with the table (``DIFFERENCES``). Each
cell is one real ``ganflow run`` in its own process, tracked in the MLflow experiment
``ganflow-stacked-table`` (``--tracking-uri``, default ``sqlite:///stacked-table.db``); a cell
already in the store is not run again. Prints mean ± standard error over the seeds, as the
papers do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

import cells  # noqa: E402
from cells import fmt  # noqa: E402

EXPERIMENT = "ganflow-stacked-table"
PACKS = {"gan": 1, "pac2": 2, "pac4": 4}

# setting -> (its --arch; its other flags; G updates a run; generated samples scored; packs
# a batch)
SETTINGS = {
    # PacGAN Table 2 (VEEGAN's): DCGAN with D 64-128-256(-512) filters, Adam 2e-4 beta1 0.5,
    # 64 packs a batch, z of 100, 128,000 fixed examples, 26,000 samples scored.
    "table2": ("dcgan:width=64", ["--latent-dim", "100", "--optimizer", "adam:beta1=0.5",
                                  "--lr-g", "2e-4", "--lr-d", "2e-4"], 4000, 26000, 64),
    # PacGAN Table 3 (Unrolled GAN's): D with a quarter of G's filters, Adam beta (0.5, 0.99),
    # D at 2e-4 and G at 1e-4, 128 packs a batch, z of 256, 25,600 samples scored.
    "table3": ("dcgan:width=16,d_width=4", ["--latent-dim", "256", "--optimizer",
                                            "adam:beta1=0.5,beta2=0.99", "--lr-g", "1e-4",
                                            "--lr-d", "2e-4"], 4000, 25600, 128),
}
COMMON = ["--loss", "non-saturating", "--regularizer", "none", "--augment", "none",
          "--d-steps", "1"]
WINDOWS = 2  # evaluations along a run (and one before it)

# The papers' rows (PacGAN Tables 2 and 3, Table 3's "D is 1/4 size of G" half; mean +-
# standard error over 10 and 50 trials; the first rows are the cited papers' own numbers).
PUBLISHED = {
    "table2": [("DCGAN (VEEGAN's Table 2)", "99.0", "3.40"),
               ("VEEGAN", "150.0", "2.95"),
               ("DCGAN (PacGAN)", "78.9 ± 6.46", "4.50 ± 0.127"),
               ("PacDCGAN2 (PacGAN)", "1000.0 ± 0.00", "0.06 ± 0.003"),
               ("PacDCGAN4 (PacGAN)", "1000.0 ± 0.00", "0.07 ± 0.005")],
    "table3": [("DCGAN (Metz et al.)", "30.6 ± 20.73", "5.99 ± 0.42"),
               ("Unrolled GAN, 10 steps (Metz et al.)", "327.2 ± 74.67", "4.66 ± 0.46"),
               ("DCGAN (PacGAN)", "78.5 ± 17.56", "5.21 ± 0.19"),
               ("PacDCGAN2 (PacGAN)", "484.5 ± 32.99", "2.61 ± 0.22"),
               ("PacDCGAN4 (PacGAN)", "667.4 ± 29.00", "1.81 ± 0.15")],
}
DIFFERENCES = """\
What differs from PacGAN's runs: the digits are scikit-learn's 1,797 8x8 ones brought to
32x32, not MNIST's 70,000 at 28x28 (the classifier is the digits' own, its accuracy logged);
ganflow's DCGAN has 4x4 kernels and no BatchNorm in D (PacGAN's: 5x5 in Table 2 with
BatchNorm from D's second layer, 3x3 in Table 3 with BatchNorm everywhere and LeakyReLU 0.3);
z is Gaussian in both (PacGAN's Table 2: uniform); G takes one step per D step (PacGAN's
Table 2 code: two); the runs are far shorter (PacGAN: 100,000 iterations in Table 2, 500,000
in Table 3); Table 3's data is the fixed set too (PacGAN draws it afresh for every batch).
Packing is PacGAN's: m images concatenated along the channels, a batch of B packs being B*m
images."""


def quarter_d(arch: str) -> str:
    """A dcgan ``--arch`` with D given a quarter of G's channels: Table 3's setting for a
    recipe (``dcgan:width=64`` -> ``dcgan:width=64,d_width=16``)."""
    from ganflow.settings import split_spec
    from ganflow_plugins.dcgan import SETTINGS as DCGAN

    name, values = split_spec(arch)
    if name != "dcgan":
        raise SystemExit(f"Table 3's setting gives D a quarter of G's channels: it needs a "
                         f"recipe with the dcgan architecture, not {arch!r}")
    values["d_width"] = str(int(values.get("width", DCGAN["width"].default)) // 4)
    return "dcgan:" + ",".join(f"{key}={value}" for key, value in values.items())


def flags(setting: str, method: str, recipe: str | None, steps: int,
          recipe_arch: str | None = None) -> list[str]:
    """``ganflow run`` flags of one cell (the seed apart); ``recipe_arch``: the recipe's own
    ``--arch``, for its Table 3 row."""
    arch, others, _, samples, batch = SETTINGS[setting]
    if method == "recipe":  # its own length, settings and evaluations; in Table 3 a small D
        small_d = ["--arch", quarter_d(recipe_arch)] if setting == "table3" else []
        return ["--plugin", recipe, "--dataset", "stacked-digits", *small_d,
                "--eval-samples", str(samples)]
    pack = PACKS[method]
    return ["--plugin", "dcgan", "--dataset", "stacked-digits",
            "--arch", arch + (f",pack={pack}" if pack > 1 else ""), *others, *COMMON,
            "--batch-size", str(batch * pack), "--epochs", str(WINDOWS),
            "--steps-per-epoch", str(steps // WINDOWS), "--eval-every", "1",
            "--eval-samples", str(samples)]


def mean_se(values, digits: int) -> str:
    """``mean ± standard error`` (the mean alone for one value, ``-`` for none)."""
    return fmt(*cells.mean_se(values), digits)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--methods", nargs="+", default=list(PACKS),
                        choices=[*PACKS, "recipe"])
    parser.add_argument("--recipe", help="a ganflow recipe's row too (its own settings and "
                        "length, on stacked-digits, scored on the setting's sample count)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, help="G updates a run of the GAN rows (default: "
                        "the setting's)")
    parser.add_argument("--tracking-uri", default="sqlite:///stacked-table.db")
    parser.add_argument("--table-only", action="store_true", help="run nothing; print the table")
    args = parser.parse_args()
    methods = [*args.methods, *(["recipe"] if args.recipe and "recipe" not in args.methods
                                else [])]
    if "recipe" in methods and not args.recipe:
        parser.error("--methods recipe needs --recipe NAME")

    import mlflow

    from cells import experiment_id, finished_run, run_cell

    recipe = {}
    if args.recipe:
        from ganflow.errors import GanflowError
        from ganflow.plugins import load_plugins

        try:
            recipe = load_plugins().recipes.get(args.recipe).obj
        except GanflowError as error:
            parser.error(str(error))
    mlflow.set_tracking_uri(args.tracking_uri)
    client = mlflow.MlflowClient()
    experiment = experiment_id(client, EXPERIMENT)

    def cell_runs(setting, method):
        steps = args.steps or SETTINGS[setting][2]
        cell_flags = flags(setting, method, args.recipe, steps, recipe.get("arch", "dcgan"))
        for seed in args.seeds:
            key = f"{setting}|{method}|{seed}|{' '.join(cell_flags)}"
            if method == "recipe":  # a recipe changed since is a new cell
                key += "|" + json.dumps(recipe, sort_keys=True)
            yield seed, cell_flags, key, finished_run(client, experiment, "stacked_table_key",
                                                      key)

    for setting in [] if args.table_only else args.settings:
        for method in methods:
            for seed, cell_flags, key, done in cell_runs(setting, method):
                if not done:
                    run_cell(client, [*cell_flags, "--seed", str(seed)],
                             tracking_uri=args.tracking_uri, experiment=EXPERIMENT,
                             prefix="stacked_table", tags={"stacked_table_key": key},
                             label=f"{setting}, {method}, seed {seed}")

    for setting in args.settings:
        steps = args.steps or SETTINGS[setting][2]
        print(f"\n{setting}: {steps:,} G updates a GAN run (a recipe: its own), "
              f"{SETTINGS[setting][3]:,} samples scored; mean ± standard error over seeds "
              f"{', '.join(map(str, args.seeds))}\n")
        print("| method | modes (of 1,000) | KL to uniform | real data's KL (floor) | "
              "s per run | CPU-s per run | runs |")
        print("|---|---|---|---|---|---|---|")
        for method in methods:
            runs = [done for *_, done in cell_runs(setting, method) if done]
            metric = lambda name: [r.data.metrics[name] for r in runs  # noqa: E731
                                   if name in r.data.metrics]
            floor = [float(r.data.params["eval_real_kl_to_uniform"]) for r in runs
                     if "eval_real_kl_to_uniform" in r.data.params]
            name = args.recipe if method == "recipe" else {"gan": "GAN", "pac2": "PacGAN2",
                                                           "pac4": "PacGAN4"}[method]
            seconds = [float(r.data.tags["stacked_table_seconds"]) for r in runs]
            cpu = [float(r.data.tags["stacked_table_cpu_seconds"]) for r in runs]
            print(f"| ganflow {name} | {mean_se(metric('eval/modes_captured'), 1)} | "
                  f"{mean_se(metric('eval/kl_to_uniform'), 3)} | {mean_se(floor, 3)} | "
                  f"{mean_se(seconds, 0)} | {mean_se(cpu, 0)} | {len(runs)} |")
        for name, modes, kl in PUBLISHED[setting]:
            print(f"| {name}, published | {modes} | {kl} | - | - | - | - |")
    print("\n" + DIFFERENCES)


if __name__ == "__main__":
    main()
