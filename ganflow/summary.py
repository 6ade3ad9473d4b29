"""What the command line says when a run ends: where everything is and what to do next."""

from __future__ import annotations

import sys
from pathlib import Path

import click


def report_result(result, config) -> None:
    """What a run did, where everything is, and what to do next; exit 130 if stopped."""
    if result.worker is not None:
        role = result.worker
        click.echo(f"\n{role.name.capitalize()} (of {role.count} workers): trained to step "
                   f"{result.steps_done} in {result.seconds:.0f} s; the chief logged, "
                   "checkpointed and registered the run")
        return
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
    click.echo(f"  samples: {shown(result.samples_path)}")
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
    if result.checkpoint is not None:
        click.echo(f"  checkpoint: {shown(result.checkpoint)} (step {result.steps_done})")
    if result.interrupted:
        click.echo(f"  resume:  ganflow resume {result.run_id}{uri_flag}")
    click.echo(f"  browse:  {ui_command(result.tracking_uri, result.experiment_id, result.run_id, uri_flag)}")
    if result.interrupted:
        sys.exit(130)


def shown(path) -> str:
    """A path as a user reads it best: relative to the current folder when inside it."""
    if path is None:
        return "none"
    try:
        return str(Path(path).relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def champion_line(model_name: str, version: int, champion) -> str:
    """Where models:/NAME@champion points now, and why."""
    alias = f"models:/{model_name}@champion"
    if champion.is_new:
        return f"champion: {alias} is now version {version} (FID {champion.fid:.4g}, the best)"
    if not champion.comparable:
        return (f"champion: {alias} stays version {champion.version}: its FID was measured "
                "with other features, data or sample count")
    return f"champion: {alias} stays version {champion.version} (FID {champion.fid:.4g})"


def ui_command(tracking_uri: str, experiment_id: str, run_id: str, uri_flag: str) -> str:
    """What shows a run: its page on a server; for a store, `ganflow ui`, which starts the
    MLflow UI on it and prints that page's address."""
    if tracking_uri.startswith(("http://", "https://")):
        return run_url(tracking_uri, experiment_id, run_id)
    return f"ganflow ui{uri_flag}  (starts the MLflow UI on this store, at this run)"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI, in its model-training view (MLflow 3 opens in its GenAI
    view, where the Model Registry is not in the sidebar)."""
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
            "?workflowType=machine_learning")
