"""What the bench tables share: each cell is one real ``ganflow run`` in its own process, timed
in wall and CPU seconds and tagged in the MLflow store, so that a cell already there is not run
again; and the mean (standard deviation) over seeds that the tables print."""

from __future__ import annotations

import math
import resource
import statistics
import subprocess
import sys
import time


def experiment_id(client, name: str) -> str:
    """The MLflow experiment ``name``, made if it is not there."""
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


def finished_run(client, experiment_id: str, tag: str, value: str):
    """The finished run of ``experiment_id`` tagged ``tag = value`` (a table's cell), or None."""
    runs = client.search_runs([experiment_id], f"tags.{tag} = '{value}' and "
                              "attributes.status = 'FINISHED'")
    return runs[0] if runs else None


def run_cell(client, flags: list[str], *, tracking_uri: str, experiment: str, prefix: str,
             tags: dict[str, str], label: str) -> str | None:
    """Run ``ganflow run FLAGS`` (unregistered, quiet) into ``experiment``; tag the run with
    ``tags`` and with ``{prefix}_seconds`` and ``{prefix}_cpu_seconds`` (the child's user and
    system time); print one line on how it went. Returns the run's id, None if it failed."""
    command = [sys.executable, "-m", "ganflow", "run", *flags, "--no-register", "-q",
               "--tracking-uri", tracking_uri, "--experiment", experiment]
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode:
        print(f"{label}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    run_id = proc.stdout.split("Run ", 1)[1].split()[0]
    for key, value in {**tags, f"{prefix}_seconds": f"{seconds:.0f}",
                       f"{prefix}_cpu_seconds": f"{cpu:.0f}"}.items():
        client.set_tag(run_id, key, value)
    fid = client.get_run(run_id).data.metrics.get("eval/fid", float("nan"))
    print(f"{label}: FID {fid:.2f} in {seconds:.0f} s ({cpu:.0f} CPU-s)", flush=True)
    return run_id


def mean_std(values, digits: int = 2) -> str:
    """``mean (std)`` of ``values``; the mean alone for one value, ``-`` for none."""
    if not values:
        return "-"
    spread = f" ({statistics.stdev(values):.{digits}f})" if len(values) > 1 else ""
    return f"{statistics.mean(values):.{digits}f}{spread}"


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the values that are numbers (a reverse KL is NaN when a
    run has no high-quality sample); NaN for the error of a single value."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return statistics.mean(values), se


def fmt(mean: float, se: float, digits: int) -> str:
    """``mean ± se`` (the mean alone without an error, ``-`` without a mean)."""
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + ("" if math.isnan(se) else f" ± {se:.{digits}f}")
