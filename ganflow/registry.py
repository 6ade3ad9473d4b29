"""The Model Registry: a registered version's tags and the ``champion`` alias."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import mlflow


def version_tags(metrics: dict[str, float], made_by: dict[str, str],
                 measured_with: dict[str, str] | None = None) -> dict[str, str]:
    """A model version's tags: what compares versions, in two groups that sort together.

    ``eval.NAME``: the sample-quality metrics of its weights (with an EMA copy, G's own
    as ``eval.NAME_no_ema``; a toy run's mode metrics as ``toy.NAME``) and what they were
    measured with (``measured_with``: ``eval.features``, ``eval.dataset``, ``eval.samples``);
    ``train.NAME``: what made it (``made_by``: recipe, loss, dataset, ...). Training losses
    are not tags (they do not compare versions; the run has them), nor is the run id (the
    version has it)."""
    tags = {f"train.{k}": str(v) for k, v in made_by.items() if v is not None}
    for key, value in metrics.items():
        if key.startswith("eval/"):
            tags[f"eval.{key[len('eval/'):]}"] = f"{value:.6g}"
        elif key.startswith("toy/"):
            tags[f"toy.{key[len('toy/'):]}"] = f"{value:.6g}"
    tags.update(measured_with or {})
    return tags


CHAMPION = "champion"
# Two FIDs compare only when measured with the same features, data and sample count.
FID = "eval.fid"
COMPARABLE_BY = ("eval.features", "eval.dataset", "eval.samples")


@dataclass
class Champion:
    """Where the alias ``champion`` points after a promotion attempt."""

    version: int
    fid: float
    is_new: bool  # the version just registered became the champion
    comparable: bool = True  # False: the champion's FID was measured another way and stays


def promote_champion(model_name: str, version: int, attempts: int = 20) -> Champion:
    """Point the alias ``champion`` at the version with the lowest ``fid`` tag comparable with
    ``version``'s.

    MLflow has no compare-and-set for aliases, so this reads every version's tags, sets the
    alias, and reads again until the alias and the best agree: a run finishing at the same
    time that set a worse version after this one's read is corrected by this one's next read
    (or this one's mistake by its). A current champion measured some other way (other
    features, data or sample count) is not comparable and stays.
    """
    client = mlflow.MlflowClient()
    mine = client.get_model_version(model_name, str(version))
    if FID not in mine.tags:
        raise ValueError(f"version {version} of {model_name} has no {FID} tag")
    group = tuple(mine.tags.get(k) for k in COMPARABLE_BY)
    for _ in range(attempts):
        versions = client.search_model_versions(f"name='{model_name}'")
        scored = [v for v in versions if FID in v.tags
                  and tuple(v.tags.get(k) for k in COMPARABLE_BY) == group]
        best = min(scored, key=lambda v: (float(v.tags[FID]), int(v.version)))
        try:
            current = client.get_model_version_by_alias(model_name, CHAMPION)
        except mlflow.exceptions.MlflowException:
            current = None
        if current is not None and FID in current.tags and \
                tuple(current.tags.get(k) for k in COMPARABLE_BY) != group:
            return Champion(int(current.version), float(current.tags[FID]), False, False)
        if current is not None and current.version == best.version:
            return Champion(int(best.version), float(best.tags[FID]),
                            int(best.version) == int(version))
        try:
            client.set_registered_model_alias(model_name, CHAMPION, best.version)
        except mlflow.exceptions.MlflowException:
            # Two first-time writers of the alias collide in the store (a unique constraint):
            # the other one's alias is there now, and the next read checks it.
            time.sleep(random.uniform(0.01, 0.1))
    raise mlflow.exceptions.MlflowException(
        f"the {CHAMPION} alias of {model_name} kept changing under {attempts} attempts")


def describe_version(run_id: str, made_by: dict, trained: str, tags: dict) -> str:
    """A version's description: the run that made it, how (``trained``: e.g. "100 epochs,
    5600 training steps"), and its headline metrics."""
    how = ", ".join(f"{k} {v}" for k, v in made_by.items() if v is not None)
    text = f"Made by run {run_id} ({how}; {trained})."
    shown = [(name, tags[f"eval.{name}"]) for name in
             ("fid", "kid", "precision", "recall", "class_coverage", "class_accuracy")
             if f"eval.{name}" in tags]
    if shown:
        text += (" " + ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in shown)
                 + f" ({tags['eval.features']} features, {tags['eval.samples']} samples, "
                 f"against {tags['eval.dataset']}).")
    return text


def register(model_uri: str, model_name: str, tags: dict, description: str = "",
             model_description: str = "") -> int:
    """Register the logged model at ``model_uri`` as a new version of ``model_name``, with
    ``tags`` and a ``description``; ``model_description`` (what the model generates, how to
    sample it) becomes the registered model's, the newest version's word on it.

    MLflow resolves ``models:/<name>@latest`` to the newest version by itself ("latest" is a
    reserved alias).
    """
    version = mlflow.register_model(model_uri, model_name, tags=tags).version
    client = mlflow.MlflowClient()
    if description:
        client.update_model_version(model_name, version, description=description)
    if model_description:
        client.update_registered_model(model_name, description=model_description)
    return int(version)


@dataclass(frozen=True)
class Registered:
    """Where a run's generator went: its model URI (``models:/NAME/VERSION`` once
    registered), and the registered name, version and champion (None when not registered,
    or not evaluated)."""

    model_uri: str
    name: str | None = None
    version: int | None = None
    champion: Champion | None = None


def register_generator(generator, latent_dim: int, shape, *, run_id: str, name: str | None,
                       recipe: str, made_by: dict, trained: str, metrics: dict,
                       num_classes: int | None = None, step: int = 0,
                       measured_with: dict | None = None) -> Registered:
    """Log ``generator`` (latent vectors of ``latent_dim`` to examples of ``shape``) to the
    active run (``ganflow.models.log_generator``, its weights from training step ``step``) and, unless ``name`` is None, register it as a new version of
    ``name``: tagged with what compares versions (``version_tags``), described (which run,
    ``made_by``, ``trained``: how long; the registered model: what it generates and how to
    sample it). A version whose sample quality was measured (``measured_with``) may become
    the ``champion``."""
    from ganflow import models
    from ganflow.style import mean_latents

    model_uri = models.log_generator(generator, latent_dim, num_classes, step=step)
    if name is None:
        return Registered(model_uri)
    tags = version_tags(metrics, made_by, measured_with)
    version = register(model_uri, name, tags,
                       description=describe_version(run_id, made_by, trained, tags),
                       model_description=models.describe_model(
                           name, recipe, shape, latent_dim, num_classes,
                           truncates=bool(mean_latents(generator))))
    champion = promote_champion(name, version) if measured_with else None
    return Registered(f"models:/{name}/{version}", name, version, champion)
