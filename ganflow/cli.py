"""The ganflow command line: run, plugins, sample. Thin: parse, call, report."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click

# Before TensorFlow is imported anywhere: keep its C++ start-up chatter off the terminal.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from ganflow import __version__  # noqa: E402
from ganflow.config import FIELD_TYPES, JIT_CHOICES, flag  # noqa: E402
from ganflow.errors import GanflowError, UsageError  # noqa: E402

HELP = {
    "arch": "architecture plugin (see `ganflow plugins`)",
    "loss": "loss plugin: minimax, non-saturating, or a plugin's",
    "dataset": "dataset: digits, tfds:NAME, folder:PATH, or a plugin's",
    "data_dir": "where tfds data is prepared (tfds's own default if unset)",
    "image_size": "resize images to N x N pixels",
    "epochs": "passes over the data",
    "batch_size": "m: examples per discriminator update and noise samples per update",
    "d_steps": "k: discriminator updates per generator update",
    "latent_dim": "size of the noise vector z",
    "lr_g": "generator learning rate (Adam)",
    "lr_d": "discriminator learning rate (Adam)",
    "beta1": "Adam beta1 for both optimizers",
    "beta2": "Adam beta2 for both optimizers",
    "seed": "seed for weights, noise and shuffling: the same seed reproduces a run",
    "ema": "also keep an exponential moving average of G's weights with this decay (e.g. "
           "0.999) and sample, evaluate and register it",
    "steps_per_epoch": "generator updates per epoch (default: one pass over the data)",
    "jit": "XLA compilation: auto lets Keras decide (on for a GPU)",
    "log_every": "log metrics to MLflow every N generator updates",
    "eval_every": "every N epochs (and before the first and after the last), log FID, KID, "
                  "precision/recall and class coverage; 0: never",
    "eval_samples": "generated samples (and real examples, up to the data's size) per evaluation",
    "features": "feature extractor for evaluation: classifier, inception, raw or a plugin's "
                "(default: classifier on labelled images, inception on other images)",
    "feature_weights": "weights file for the feature extractor (inception: Keras's "
                       "InceptionV3 notop .h5)",
    "samples": "images in each epoch's sample grid",
    "output_dir": "where sample grids are written locally",
    "tracking_uri": "MLflow tracking URI (else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    "experiment": "MLflow experiment name",
    "register": "register the generator in the MLflow Model Registry",
    "registered_model": "registered model name (default: <recipe>-generator)",
}
CLICK_TYPES = {"int": click.INT, "float": click.FLOAT, "str": click.STRING}
METAVARS = {"ema": "DECAY", "eval_every": "N", "eval_samples": "N", "features": "NAME",
            "feature_weights": "PATH", "arch": "NAME", "loss": "NAME", "dataset": "NAME[:ARG]",
            "data_dir": "DIR", "output_dir": "DIR", "tracking_uri": "URI", "experiment": "NAME",
            "registered_model": "NAME"}


def import_tensorflow_quietly():
    """Import TensorFlow without its C++ start-up lines on stderr.

    TF 2.21 writes them before absl logging is set up, so TF_CPP_MIN_LOG_LEVEL cannot stop
    them. Set TF_CPP_MIN_LOG_LEVEL below 3 to see them. Python errors are not affected.
    """
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL") != "3":
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def reports_errors(command):
    """A user's mistake becomes one line on stderr and a non-zero exit code, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        import_tensorflow_quietly()
        try:
            return command(*args, **kwargs)
        except GanflowError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper


def config_options(command):
    """One option per RunConfig field (recipe and plugin_modules have their own)."""
    for name in reversed(list(HELP)):
        kind = FIELD_TYPES[name].split(" ")[0]
        if kind == "bool":
            option = click.option(f"{flag(name)}/--no-{name}", default=None, help=HELP[name])
        elif name == "jit":
            option = click.option(flag(name), type=click.Choice(JIT_CHOICES), help=HELP[name])
        else:
            option = click.option(flag(name), type=CLICK_TYPES[kind], help=HELP[name],
                                  metavar=METAVARS.get(name))
        command = option(command)
    return command


plugin_module_option = click.option(
    "--plugin-module",
    "plugin_modules",
    multiple=True,
    metavar="PATH_OR_MODULE",
    help="also load plugins from this .py file or module (repeatable)",
)


@click.group()
@click.version_option(__version__, prog_name="ganflow")
def main():
    """Train GANs on TensorFlow/Keras 3 from plugins, tracked in MLflow."""


@main.command()
@click.option("--plugin", "recipe", default="dcgan", show_default=True, metavar="NAME",
              help="recipe to run: its defaults for every setting below")
@click.option("--config", "config_file", metavar="FILE",
              help="JSON or YAML file of settings; flags override it")
@plugin_module_option
@config_options
@click.option("-q", "--quiet", is_flag=True, help="no progress bar")
@reports_errors
def run(recipe, config_file, plugin_modules, quiet, **flags):
    """Train a GAN from a recipe and track it in MLflow.

    Each iteration makes --d-steps discriminator updates, each on --batch-size fresh real
    examples and fresh noise, then one generator update.
    """
    from ganflow.plugins import load_plugins
    from ganflow.runner import resolve_config, run as run_gan

    plugins = load_plugins(plugin_modules)
    flags["plugin_modules"] = plugin_modules or None
    config = resolve_config(plugins, recipe, config_file, flags)
    result = run_gan(config, plugins, verbose=0 if quiet else 1,
                     report=None if quiet else click.echo,
                     eval_optional=not asked_for("eval_every", config_file, flags))

    state = "interrupted" if result.interrupted else "finished"
    click.echo(f"\nRun {result.run_id} {state} in {result.seconds:.0f} s "
               f"(experiment {result.experiment!r}, tracking {result.tracking_uri})")
    training = {k: v for k, v in result.metrics.items() if not k.startswith("eval")}
    quality = {k: v for k, v in result.metrics.items() if k.startswith("eval")}
    if training:
        click.echo("  final:   " + ", ".join(f"{k} {v:.4f}" for k, v in training.items()))
    if quality:
        click.echo("  quality: " + ", ".join(f"{k.removeprefix('eval/')} {v:.4g}"
                                             for k, v in quality.items()))
    click.echo(f"  samples: {result.samples_path}")
    uri_flag = f" --tracking-uri {config.tracking_uri}" if config.tracking_uri else ""
    if result.model_version:
        click.echo(f"  model:   {result.model_uri} (registered; also "
                   f"models:/{result.model_name}@latest)")
        click.echo(f"  sample:  ganflow sample models:/{result.model_name}@latest"
                   f"{uri_flag} -o samples.png")
    else:
        click.echo(f"  model:   {result.model_uri} (not registered)")
    if result.champion is not None:
        click.echo("  " + champion_line(result.model_name, result.model_version, result.champion))
    click.echo(f"  browse:  {ui_command(result.tracking_uri)}")
    if result.interrupted:
        sys.exit(130)


def asked_for(key: str, config_file: str | None, flags: dict) -> bool:
    """Whether the user set ``key`` (by flag or config file) rather than the recipe."""
    from ganflow.config import load_config_file

    return flags.get(key) is not None or bool(config_file and key in load_config_file(config_file))


def champion_line(model_name: str, version: int, champion) -> str:
    """Where models:/NAME@champion points now, and why."""
    alias = f"models:/{model_name}@champion"
    if champion.is_new:
        return f"champion: {alias} is now version {version} (FID {champion.fid:.4g}, the best)"
    if not champion.comparable:
        return (f"champion: {alias} stays version {champion.version}: its FID was measured "
                "with other features, data or sample count")
    return f"champion: {alias} stays version {champion.version} (FID {champion.fid:.4g})"


def ui_command(tracking_uri: str) -> str:
    """The command that shows these runs: a server is already a UI; a store needs `mlflow ui`."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    return f"mlflow ui --backend-store-uri {tracking_uri}  (then open http://127.0.0.1:5000)"


@main.command()
@plugin_module_option
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@reports_errors
def plugins(plugin_modules, as_json):
    """List every recipe, loss, dataset, architecture and feature extractor, with the plugin
    that provides it."""
    from ganflow.plugins import load_plugins

    loaded = load_plugins(plugin_modules)
    kinds = {
        "recipes": loaded.recipes,
        "losses": loaded.losses,
        "datasets": loaded.datasets,
        "architectures": loaded.architectures,
        "feature extractors": loaded.features,
    }
    rows = {
        kind: [
            {
                "name": e.usage,
                "plugin": e.plugin,
                "description": e.description,
            }
            for e in registry
        ]
        for kind, registry in kinds.items()
    }
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for kind, entries in rows.items():
        click.echo(kind)
        for e in entries:
            click.echo(f"  {e['name']:<18} {e['plugin']:<26} {e['description']}")


@main.command()
@click.argument("model_uri")
@click.option("-n", "--count", type=click.IntRange(min=1), default=64, show_default=True,
              help="how many samples")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="noise seed: the same seed gives the same samples")
@click.option("-o", "--output", metavar="FILE",
              help="where to write (default samples.png, or samples.npz with --npz)")
@click.option("--npz", is_flag=True, help="write the raw array (samples, z) instead of a PNG grid")
@click.option("--tracking-uri", help="MLflow tracking URI (else MLFLOW_TRACKING_URI or default)")
@reports_errors
def sample(model_uri, count, seed, output, npz, tracking_uri):
    """Sample a logged generator: MODEL_URI is any models:/ or runs:/ URI."""
    import numpy as np

    from ganflow import tracking
    from ganflow.images import save_grid

    tracking.use_tracking_uri(tracking_uri, must_exist=True)
    samples, z = tracking.sample(model_uri, count, seed)
    output = output or ("samples.npz" if npz else "samples.png")
    if npz:
        np.savez(output, samples=samples, z=z)
    elif samples.ndim == 4:
        save_grid(samples, output)
    else:
        from ganflow.toy import plot_points

        plot_points(samples, output, f"{count} samples of {model_uri}")
    click.echo(f"Wrote {count} samples of shape {samples.shape[1:]} to {output}")


@main.command()
@click.argument("model_uri")
@click.option("--dataset", metavar="NAME[:ARG]",
              help="the data to compare with (default: the dataset the model was trained on)")
@click.option("-n", "--count", type=click.IntRange(min=10), default=10_000, show_default=True,
              help="generated samples; as many real examples, up to the dataset's size")
@click.option("--features", metavar="NAME",
              help="feature extractor: classifier, inception, raw or a plugin's (default: "
                   "classifier on labelled images, inception on other images, raw on points)")
@click.option("--weights", metavar="PATH",
              help="weights file for the feature extractor (inception: Keras's InceptionV3 "
                   "notop .h5)")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="noise and subset seed: the same seed gives the same numbers")
@click.option("--data-dir", metavar="DIR", help=HELP["data_dir"])
@click.option("--image-size", type=click.IntRange(min=4), metavar="N", help=HELP["image_size"])
@click.option("--tracking-uri", help="MLflow tracking URI (else MLFLOW_TRACKING_URI or default)")
@plugin_module_option
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@reports_errors
def evaluate(model_uri, dataset, count, features, weights, seed, data_dir, image_size,
             tracking_uri, plugin_modules, as_json):
    """Score a logged generator against a dataset: FID, KID, precision/recall, class coverage.

    MODEL_URI is any models:/ or runs:/ URI. FID and KID: lower is better; precision (share
    of samples that look like data), recall (share of data the samples cover) and class
    coverage: higher is better.
    """
    import time

    from ganflow import evaluation, tracking
    from ganflow.plugins import load_plugins
    from ganflow.types import DatasetOptions

    started = time.perf_counter()
    tracking.use_tracking_uri(tracking_uri, must_exist=True)
    plugins = load_plugins(plugin_modules)
    model, latent_dim = tracking.load_sampler(model_uri)
    trained_on = tracking.training_params(model_uri)
    dataset = dataset or trained_on.get("dataset")
    if not dataset:
        raise UsageError(f"{model_uri} does not say what it was trained on: pass --dataset NAME")
    if trained_on.get("dataset") == dataset:  # its image size and data folder too
        image_size = image_size or int(trained_on.get("image_size") or 0) or None
        data_dir = data_dir or trained_on.get("data_dir") or None
    entry, argument = plugins.dataset(dataset)
    if features:
        plugins.features.get(features)
    source = entry.obj(DatasetOptions(argument, data_dir, image_size))
    made = tracking.sample_shape(model)
    if made != tuple(source.spec.shape):
        raise UsageError(f"{model_uri} makes samples of shape {made} but {dataset} has "
                         f"examples of shape {tuple(source.spec.shape)}: pass the dataset "
                         "(and --image-size) it was trained on")
    evaluator = evaluation.build(plugins, source, dataset, features, weights, count, seed)
    samples = tracking.predict_quietly(model, evaluation.noise(count, latent_dim, seed))
    values = evaluator(samples)
    seconds = time.perf_counter() - started
    report = {"model_uri": model_uri, "dataset": dataset, "features": evaluator.features,
              "samples": count, "real_examples": len(evaluator.real_features),
              "seed": seed, "metrics": values, "info": evaluator.info,
              "seconds": round(seconds, 2)}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"{model_uri} against {dataset}: {count} samples, "
               f"{report['real_examples']} real examples, {evaluator.features} features "
               f"({evaluator.real_features.shape[1]}-d), {seconds:.1f} s")
    click.echo(evaluation.format_table(values))
    for key, value in evaluator.info.items():
        click.echo(f"  {key}: {value}")


@main.command()
@click.option("--pair", "pairs", nargs=2, multiple=True, metavar="P_DATA P_G",
              help="a 1-D mixture pair to check, each as JSON {\"means\": [...], \"stds\": "
                   "[...], \"weights\": [...]} or means=-2,2/stds=0.5,0.5 (repeatable; "
                   "default: five pairs from nearly disjoint to identical)")
@click.option("--steps", type=click.IntRange(min=100), default=3000, show_default=True,
              help="discriminator updates per pair")
@click.option("--curve-steps", type=click.IntRange(min=100), default=1000, show_default=True,
              help="generator updates in each training curve of claim c")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--output-dir", default="ganflow-theory", show_default=True, metavar="DIR",
              help="where the report and plots are written")
@click.option("--tracking-uri", help="MLflow tracking URI (else MLFLOW_TRACKING_URI or default)")
@click.option("--experiment", default="ganflow-theory", show_default=True,
              help="MLflow experiment name")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
@reports_errors
def theory(pairs, steps, curve_steps, seed, output_dir, tracking_uri, experiment, as_json):
    """Check the lecture's claims on 1-D mixtures with the real training code.

    a. D trained against a fixed P_G matches D* = P_data / (P_data + P_G); b. its V equals
    -2 log 2 + 2 JSD; c. the minimax generator loss saturates where the non-saturating one does
    not. Writes a report with plots, logs it to MLflow, exits 1 if a claim does not hold.
    """
    from ganflow import theory as checks
    from ganflow import tracking
    from ganflow.mixture import Mixture
    from ganflow.plugins import load_plugins

    parsed = None
    if pairs:
        parsed = []
        for i, (data, g) in enumerate(pairs, 1):
            p_data = Mixture.parse(data, what=f"--pair {i} P_DATA")
            p_g = Mixture.parse(g, what=f"--pair {i} P_G")
            if p_data.dim != 1 or p_g.dim != 1:
                raise UsageError(f"--pair {i}: the theory checks take 1-D mixtures (numbers as means)")
            parsed.append((f"pair {i}", p_data, p_g))
    plugins = load_plugins()
    tracking.use_tracking_uri(tracking_uri)
    results = checks.check(plugins, parsed, steps=steps, curve_steps=curve_steps, seed=seed)
    files = checks.write_report(results, output_dir)
    public = checks.public(results)
    (Path(output_dir) / "results.json").write_text(json.dumps(public, indent=2))
    claims = public["claims"]
    metrics = {f"{name}/{k}": float(v) for name, claim in claims.items()
               for k, v in claim.items() if isinstance(v, (int, float)) and not isinstance(v, str)}
    for i, pair in enumerate(public["pairs"]):
        metrics.update({f"pair{i}/{k}": pair[k] for k in
                        ("value", "jsd", "max_value", "gap", "d_mean_abs_error", "d_max_abs_error")})
    params = {**public["settings"],
              **{f"pair{i}": json.dumps({"name": p["name"], "p_data": p["p_data"], "p_g": p["p_g"]})
                 for i, p in enumerate(public["pairs"])}}
    run_id = tracking.log_report(experiment, "theory", params, metrics,
                                 [*files, Path(output_dir) / "results.json"])
    if as_json:
        click.echo(json.dumps({**public, "run_id": run_id, "report": str(files[0])}, indent=2))
    else:
        click.echo(checks.report_markdown(results).split("\n![")[0].rstrip())
        click.echo(f"\nReport: {files[0]} (MLflow run {run_id}, experiment {experiment!r})")
    if not all(claim["holds"] for claim in claims.values()):
        sys.exit(1)
