"""The ganflow command line: run, plugins, settings, sample, evaluate, theory. Thin: parse,
call, report."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

# Before TensorFlow is imported anywhere: keep its C++ start-up chatter off the terminal.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from ganflow import __version__  # noqa: E402
from ganflow.config import FIELDS, flag  # noqa: E402
from ganflow.errors import GanflowError, UsageError  # noqa: E402
from ganflow.options import (  # noqa: E402
    config_options,
    keras_verbosity,
    loaded,
    plugin_options,
    progress_options,
    reports_errors,
)

SEED_MAX = 2**32 - 1  # what NumPy and TensorFlow take as a seed
GRID_LIMIT = 10_000  # samples in one picture
PICTURES = (".png", ".jpg", ".jpeg", ".webp")  # what Pillow and matplotlib both write


def entry():
    """The ``ganflow`` command: ``main`` with Ctrl-C, SIGTERM and SIGHUP handled until the
    process exits (``ganflow.signals``): a second signal, or one that comes as a stopped run
    says how it ended, never kills the process half-way."""
    import signal

    from ganflow import signals

    try:
        with signals.terminate_as_interrupt():
            main()
    finally:  # the process is exiting: a late signal must not kill it half-way
        for signum in signals.STOPPING:
            if signal.getsignal(signum) != signal.SIG_IGN:
                signal.signal(signum, signal.SIG_IGN)


@click.group()
@click.version_option(__version__, prog_name="ganflow")
@click.option("--debug", is_flag=True, help="show the traceback behind an error")
def main(debug):
    """Train GANs on TensorFlow/Keras 3 from plugins, tracked in MLflow."""


@main.command()
@click.option("--plugin", "recipe", default="dcgan", show_default=True, metavar="NAME",
              help="recipe to run: its defaults for every setting below")
@click.option("--config", "config_file", metavar="FILE",
              help="JSON or YAML file of settings; flags override it")
@plugin_options
@config_options
@progress_options
@reports_errors
def run(recipe, config_file, quiet, verbose, **flags):
    """Train a GAN from a recipe and track it in MLflow.

    Each iteration makes --d-steps discriminator updates, each on --batch-size fresh real
    examples and fresh noise, then one generator update.
    """
    from ganflow.config import resolve, user_layers
    from ganflow.resolve import configure
    from ganflow.runner import run as run_gan
    from ganflow.summary import report_result

    flags = {k: (v or None) if isinstance(v, tuple) else v for k, v in flags.items()}
    given = user_layers(config_file, flags)
    wanted = resolve(*given)  # checked now; and which plugins to load (a file may say)
    plugins = loaded(wanted.plugin_modules, wanted.disable_plugins)
    config = configure(plugins, recipe, given=given)
    result = run_gan(config, plugins, verbose=keras_verbosity(quiet, verbose),
                     report=None if quiet else click.echo)
    report_result(result, config)


@main.command()
@click.argument("run_id")
@click.option("--epochs", type=click.IntRange(min=1), metavar="N",
              help="epochs in all (more than the run had, to train a finished run longer)")
@click.option("--lr-g", type=float, metavar="RATE", help=FIELDS["lr_g"].metadata["help"])
@click.option("--lr-d", type=float, metavar="RATE", help=FIELDS["lr_d"].metadata["help"])
@click.option("--tracking-uri", help="MLflow tracking URI (else MLFLOW_TRACKING_URI or default)")
@click.option("--output-dir", metavar="DIR",
              help="the folder the run's checkpoints are in (default: the one it was started "
              "with)")
@plugin_options
@progress_options
@reports_errors
def resume(run_id, epochs, lr_g, lr_d, tracking_uri, output_dir, plugin_modules,
           disable_plugins, quiet, verbose):
    """Continue RUN_ID from its newest checkpoint, in the same MLflow run, with the settings
    it was started with (the learning rates and the number of epochs may change)."""
    from ganflow import tracking
    from ganflow.resume import resume_config
    from ganflow.runner import run as run_gan
    from ganflow.summary import report_result

    tracking.use_tracking_uri(tracking_uri, must_exist=True)
    config = resume_config(run_id, {"epochs": epochs, "lr_g": lr_g, "lr_d": lr_d,
                                    "tracking_uri": tracking_uri, "output_dir": output_dir,
                                    "plugin_modules": plugin_modules or None,
                                    "disable_plugins": disable_plugins or None})
    result = run_gan(config, loaded(config.plugin_modules, config.disable_plugins),
                     verbose=keras_verbosity(quiet, verbose),
                     report=None if quiet else click.echo, resume_run_id=run_id)
    report_result(result, config)


@main.command(name="prepare")
@click.argument("source")
@click.argument("dest")
@click.option("--resolution", type=click.IntRange(4, 4096), default=64, show_default=True,
              metavar="N", help="images are made N x N pixels")
@click.option("--channels", type=click.Choice(["auto", "1", "3"]), default="auto",
              show_default=True, help="auto: RGB if any image has colour, else grayscale")
@click.option("--crop", type=click.Choice(["center", "none"]), default="center",
              show_default=True, help="center: the centre square; none: skip non-square images")
@click.option("--background", type=click.Choice(["white", "black"]), default="white",
              show_default=True, help="what transparent pixels become")
@click.option("--shard-size", type=click.IntRange(1, 1_000_000), default=1000,
              show_default=True, metavar="N", help="images per shard")
@click.option("--workers", type=click.IntRange(min=1), metavar="N",
              help="processes decoding images (default: one per core)")
@click.option("--data-dir", metavar="DIR", help="tensorflow-datasets' data folder, for "
              "SOURCE tfds:NAME (default: tfds's)")
@reports_errors
def prepare_dataset(source, dest, resolution, channels, crop, background, shard_size, workers,
                    data_dir):
    """Prepare the images of SOURCE (a folder, a zip, or tfds:NAME[SLICE] of a train split)
    once, into DEST, for training with --dataset prepared:DEST: decoded, converted, cropped
    and resized, in TFRecord shards with a manifest. Run it again after an interrupt to
    finish."""
    import time

    from ganflow import dataset_tool

    options = dataset_tool.Options(resolution, channels, crop, background, shard_size)
    started = time.perf_counter()
    opened = dataset_tool.open_source(source, data_dir)  # a mistake in SOURCE before the bar
    files = opened.names
    try:
        with click.progressbar(length=len(files), label="Preparing", show_eta=True,
                               show_pos=True, file=sys.stderr) as bar:
            manifest, skipped = dataset_tool.prepare(opened, dest, options, workers, bar.update)
    except KeyboardInterrupt as exc:
        from ganflow.signals import name_of

        done = len(list(Path(dest).glob("shard-*.tfrecord")))
        click.echo(f"Stopped by {name_of(exc)} with {done} shards done in {dest}: the same "
                   "command finishes the others", err=True)
        sys.exit(130)
    seconds = time.perf_counter() - started
    why = f": {', '.join(f'{n} {reason}' for reason, n in sorted(skipped.items()))}; see " \
          f"{Path(dest) / dataset_tool.SKIPPED}" if skipped else ""
    labels = f", {len(manifest.label_names)} labels" if manifest.label_names else ""
    click.echo(f"Prepared {manifest.count:,} images of {manifest.resolution}x"
               f"{manifest.resolution}x{manifest.channels}{labels} in {len(manifest.shards)} "
               f"shards in {dest} ({seconds:.0f} s, {len(files) / seconds:.0f} images/s); "
               f"skipped {manifest.skipped:,}{why}")
    click.echo(f"Train on it: ganflow run --dataset prepared:{dest}")


@main.command()
@click.argument("run_id", required=False)
@click.option("--output-dir", default=FIELDS["output_dir"].default, show_default=True,
              metavar="DIR", help="the folder of the runs' local folders")
@click.option("--tracking-uri", help="MLflow tracking URI (default: the one each run used)")
@reports_errors(tensorflow=False)
def sync(run_id, output_dir, tracking_uri):
    """Send what RUN_ID (else every run in --output-dir) logged and its tracking store never
    took (the run killed, or cut off from the store) from the run's journal, exactly once."""
    import mlflow

    from ganflow import journal, resume, tracking
    from ganflow.errors import first_line
    from ganflow.outbox import TrackingUnavailable

    folders = [Path(output_dir) / run_id] if run_id else sorted(Path(output_dir).glob("*"))
    if run_id and not folders[0].is_dir():
        raise UsageError(f"no folder {folders[0]}: pass the run's --output-dir")
    waiting = [f for f in folders if journal.waiting(f)]
    if not waiting:
        click.echo(f"Nothing to send: no run in {output_dir} has logging calls waiting"
                   if not run_id else f"Nothing to send: run {run_id} has no calls waiting")
    failed = []
    for folder in waiting:
        head = journal.header(folder) or {}
        run = head.get("run_id", folder.name)
        try:
            uri = tracking.use_tracking_uri(tracking_uri or head.get("tracking_uri"),
                                            must_exist=True)
            with resume.hold(output_dir, folder.name):  # not while ganflow resume sends it
                replayed = journal.replay(folder, run, mlflow.MlflowClient(uri))
        except GanflowError as exc:
            failed.append(f"run {run}: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - the store's errors are many
            failed.append(f"run {run}: the store did not take its calls ({first_line(exc)}); "
                          "they stay in its journal")
            continue
        click.echo(replayed.line() if replayed else
                   f"Run {run} is still running: its own process sends its calls")
    if failed:
        raise TrackingUnavailable("; ".join(failed))


@main.command()
@click.option("--tracking-uri", help="MLflow tracking URI (else MLFLOW_TRACKING_URI or default)")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="web server processes (mlflow ui's default is 4: one is enough for one "
                   "person, in 0.5 GB instead of 1.3)")
@reports_errors(tensorflow=False)
def ui(tracking_uri, port, workers):
    """Start the MLflow UI on the store the runs went to, on 127.0.0.1, and print the address
    of the newest run (as `tensorboard --logdir` does). Ctrl-C stops it."""
    import mlflow

    from ganflow import tracking
    from ganflow.net import reachable
    from ganflow.summary import run_url
    from ganflow.ui import serve

    uri = tracking.use_tracking_uri(tracking_uri, must_exist=True)
    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    newest = client.search_runs(experiments, order_by=["attributes.start_time DESC"],
                                max_results=1) if experiments else []
    if uri.startswith(("http://", "https://")):
        click.echo(run_url(uri, newest[0].info.experiment_id, newest[0].info.run_id)
                   if newest else uri)
        return
    if reachable("127.0.0.1", port, timeout=1.0):
        raise UsageError(f"--port {port}: something is listening there already (another "
                         "MLflow UI?): pass another --port")
    base = f"http://127.0.0.1:{port}"
    click.echo(f"MLflow UI on {uri}: {base}/#/experiments?workflowType=machine_learning")
    if newest:
        click.echo(f"newest run: {run_url(base, newest[0].info.experiment_id, newest[0].info.run_id)}")
    click.echo("Ctrl-C stops it.")
    sys.exit(serve(uri, port, workers))


@main.command()
@plugin_options
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@reports_errors
def plugins(plugin_modules, disable_plugins, as_json):
    """List everything the plugins registered, kind by kind (recipes, losses, datasets, ...),
    with the plugin that provides it and its settings."""
    from ganflow.settings import TYPES

    registries = loaded(plugin_modules, disable_plugins).registries
    rows = {
        title: [
            {
                "name": e.usage,
                "plugin": e.plugin,
                "description": e.description,
                **({"settings": {key: {"type": TYPES[s.kind], "default": s.default,
                                       "help": s.help} for key, s in e.settings.items()}}
                   if e.settings else {}),
            }
            for e in registry
        ]
        for title, registry in registries.items()
    }
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for title, registry in registries.items():
        click.echo(title)
        for e in registry:
            click.echo(f"  {e.usage:<24} {e.plugin:<26} {e.description}")
            for key, setting in e.settings.items():
                click.echo(f"      {key}: {setting.describe()}")


@main.command()
@click.option("--plugin", "recipe", metavar="NAME", help="show this recipe's values")
@plugin_options
@reports_errors
def settings(recipe, plugin_modules, disable_plugins):
    """List every setting of `ganflow run` by its config-file name, with its flag and help
    (and a recipe's value with --plugin NAME)."""
    defaults = {}
    if recipe:
        from ganflow.config import recipe_layer

        recipes = loaded(plugin_modules, disable_plugins).recipes
        defaults = recipe_layer(recipe, recipes.get(recipe).obj)[1]
    for name, field in FIELDS.items():
        value = defaults.get(name, field.default)
        shown = "unset" if value is None or value == () else json.dumps(value)
        where = "--plugin" if name == "recipe" else flag(name)
        click.echo(f"{name} = {shown}    ({where})")
        click.echo(f"    {field.metadata['help']}")


@main.command()
@click.argument("model_uri")
@click.option("-n", "--count", type=click.IntRange(min=1), default=64, show_default=True,
              help="how many samples")
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True,
              help="noise seed: the same seed gives the same samples")
@click.option("-o", "--output", metavar="FILE",
              help="where to write (default samples.png, or samples.npz with --npz)")
@click.option("--npz", is_flag=True,
              help="write the raw arrays (samples, z, and labels of a conditional generator) "
                   "instead of a PNG grid")
@click.option("--class", "label", type=click.IntRange(min=0), metavar="N",
              help="a conditional generator's class to sample (default: every class, one "
                   "row of the grid each)")
@click.option("--truncation", type=click.FloatRange(0.0, 1.0), metavar="PSI",
              help="the truncation trick: w pulled towards the mean latent, w_avg + PSI (w - "
                   "w_avg) (1: none, 0: the mean latent's image); stylegan2 generators")
@click.option("--tracking-uri", help="MLflow tracking URI (else MLFLOW_TRACKING_URI or default)")
@plugin_options
@reports_errors
def sample(model_uri, count, seed, output, npz, label, truncation, tracking_uri,
           plugin_modules, disable_plugins):
    """Sample a logged generator: MODEL_URI is any models:/ or runs:/ URI."""
    import numpy as np

    from ganflow import models, noise, tracking
    from ganflow.images import save_grid

    output = Path(output or ("samples.npz" if npz else "samples.png"))
    if not npz and output.suffix.lower() not in PICTURES:
        raise UsageError(f"-o {output}: a picture is written as {', '.join(PICTURES)}; raw "
                         "arrays with --npz")
    if not npz and count > GRID_LIMIT:
        raise UsageError(f"-n {count:,}: a picture shows at most {GRID_LIMIT:,} samples; "
                         "write more with --npz")
    tracking.check_writable(output.parent, "-o")
    tracking.use_tracking_uri(tracking_uri, must_exist=True)
    if plugin_modules:  # a plugin's layers, registered with Keras as it loads
        loaded(plugin_modules, disable_plugins)
    samples, z, labels = models.sample(model_uri, count, seed, label, truncation)
    if npz:
        np.savez(output, samples=samples, z=z, **({} if labels is None else {"labels": labels}))
    elif samples.ndim == 4:
        rows_by_class = labels is not None and label is None
        save_grid(samples, output, columns=noise.grid_columns(labels) if rows_by_class else None)
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
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True,
              help="noise and subset seed: the same seed gives the same numbers")
@click.option("--data-dir", metavar="DIR", help=FIELDS["data_dir"].metadata["help"])
@click.option("--image-size", type=click.IntRange(min=4), metavar="N", help=FIELDS["image_size"].metadata["help"])
@click.option("--tracking-uri", help="MLflow tracking URI (else MLFLOW_TRACKING_URI or default)")
@plugin_options
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@reports_errors
def evaluate(model_uri, dataset, count, features, weights, seed, data_dir, image_size,
             tracking_uri, plugin_modules, disable_plugins, as_json):
    """Score a logged generator against a dataset: FID, KID, precision/recall, class coverage.

    MODEL_URI is any models:/ or runs:/ URI. FID and KID: lower is better; precision (share
    of samples that look like data), recall (share of data the samples cover) and class
    coverage: higher is better.
    """
    from ganflow import evaluation, tracking

    tracking.use_tracking_uri(tracking_uri, must_exist=True)
    report = evaluation.evaluate_model(loaded(plugin_modules, disable_plugins), model_uri,
                                       dataset, count, features, weights, seed, data_dir,
                                       image_size)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    click.echo(f"{model_uri} against {report.dataset}: {count} samples, "
               f"{report.real_examples} real examples, {report.features} features "
               f"({report.feature_dim}-d), {report.seconds:.1f} s")
    click.echo(evaluation.format_table(report.metrics))
    for key, value in report.info.items():
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
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True)
@click.option("--output-dir", default="ganflow-theory", show_default=True, metavar="DIR",
              help="where the report and plots are written")
@click.option("--tracking-uri", help="MLflow tracking URI (else MLFLOW_TRACKING_URI or default)")
@click.option("--experiment", default="ganflow-theory", show_default=True,
              help="MLflow experiment name")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
@plugin_options
@reports_errors
def theory(pairs, steps, curve_steps, seed, output_dir, tracking_uri, experiment, as_json,
           plugin_modules, disable_plugins):
    """Check the lecture's claims on 1-D mixtures with the real training code.

    a. D trained against a fixed P_G matches D* = P_data / (P_data + P_G); b. its V equals
    -2 log 2 + 2 JSD; c. the minimax generator loss saturates where the non-saturating one does
    not. Writes a report with plots, logs it to MLflow, exits 1 if a claim does not hold.
    """
    from ganflow import theory as checks
    from ganflow import tracking
    from ganflow.mixture import Mixture

    parsed = None
    if pairs:
        parsed = []
        for i, (data, g) in enumerate(pairs, 1):
            p_data = Mixture.parse(data, what=f"--pair {i} P_DATA")
            p_g = Mixture.parse(g, what=f"--pair {i} P_G")
            if p_data.dim != 1 or p_g.dim != 1:
                raise UsageError(f"--pair {i}: the theory checks take 1-D mixtures (numbers as means)")
            parsed.append((f"pair {i}", p_data, p_g))
    plugins = loaded(plugin_modules, disable_plugins)
    tracking.use_tracking_uri(tracking_uri)
    results, report, run_id = checks.run(plugins, parsed, steps=steps, curve_steps=curve_steps,
                                         seed=seed, output_dir=output_dir, experiment=experiment)
    if as_json:
        click.echo(json.dumps({**results.to_dict(), "run_id": run_id, "report": str(report)},
                              indent=2))
    else:
        click.echo(checks.report_markdown(results).split("\n![")[0].rstrip())
        click.echo(f"\nReport: {report} (MLflow run {run_id}, experiment {experiment!r})")
    if not results.holds:
        sys.exit(1)
