"""The Model Registry: a registered version's tags and the ``champion`` alias."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import mlflow


def version_tags(metrics: dict[str, float], evaluator_params: dict | None) -> dict[str, str]:
    """A model version's tags from its run's final metrics: ``eval/fid`` as ``fid``,
    ``eval_no_ema/fid`` as ``fid_no_ema``, the rest by their names; plus what the evaluation
    was measured with (``eval_features``, ``eval_dataset``, ``eval_samples``)."""
    tags = {}
    for key, value in metrics.items():
        if key.startswith("eval/"):
            key = key[len("eval/"):]
        elif key.startswith("eval_no_ema/"):
            key = key[len("eval_no_ema/"):] + "_no_ema"
        tags[key] = f"{value:.6g}"
    tags.update({k: str(v) for k, v in (evaluator_params or {}).items()})
    return tags


CHAMPION = "champion"
# Two FIDs compare only when measured with the same features, data and sample count.
COMPARABLE_BY = ("eval_features", "eval_dataset", "eval_samples")


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
    if "fid" not in mine.tags:
        raise ValueError(f"version {version} of {model_name} has no fid tag")
    group = tuple(mine.tags.get(k) for k in COMPARABLE_BY)
    for _ in range(attempts):
        versions = client.search_model_versions(f"name='{model_name}'")
        scored = [v for v in versions if "fid" in v.tags
                  and tuple(v.tags.get(k) for k in COMPARABLE_BY) == group]
        best = min(scored, key=lambda v: (float(v.tags["fid"]), int(v.version)))
        try:
            current = client.get_model_version_by_alias(model_name, CHAMPION)
        except mlflow.exceptions.MlflowException:
            current = None
        if current is not None and "fid" in current.tags and \
                tuple(current.tags.get(k) for k in COMPARABLE_BY) != group:
            return Champion(int(current.version), float(current.tags["fid"]), False, False)
        if current is not None and current.version == best.version:
            return Champion(int(best.version), float(best.tags["fid"]),
                            int(best.version) == int(version))
        try:
            client.set_registered_model_alias(model_name, CHAMPION, best.version)
        except mlflow.exceptions.MlflowException:
            # Two first-time writers of the alias collide in the store (a unique constraint):
            # the other one's alias is there now, and the next read checks it.
            time.sleep(random.uniform(0.01, 0.1))
    raise mlflow.exceptions.MlflowException(
        f"the {CHAMPION} alias of {model_name} kept changing under {attempts} attempts")




def register(model_uri: str, model_name: str, tags: dict) -> int:
    """Register the logged model at ``model_uri`` as a new version of ``model_name``.

    MLflow resolves ``models:/<name>@latest`` to the newest version by itself ("latest" is a
    reserved alias).
    """
    return int(mlflow.register_model(model_uri, model_name, tags=tags).version)
