"""`ganflow ui`, and where the command line points a user to see a run."""

import time

import mlflow
import pytest

from conftest import free_port
from ganflow.summary import ui_command


@pytest.mark.parametrize("uri, flag, expected", [
    ("http://127.0.0.1:5000", "", "http://127.0.0.1:5000/#/experiments/3/runs/abc"
                                  "?workflowType=machine_learning"),
    ("sqlite:////a/mlflow.db", " --tracking-uri sqlite:////a/mlflow.db",
     "ganflow ui --tracking-uri sqlite:////a/mlflow.db  (starts the MLflow UI on this store, "
     "at this run)"),
])
def test_ui_command(uri, flag, expected):
    assert ui_command(uri, "3", "abc", flag) == expected


def descendants(pid: int) -> list[str]:
    """The command lines of every process below ``pid`` (Linux's /proc)."""
    from pathlib import Path

    parents, commands = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            commands[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes()
        except OSError:  # it ended meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return [commands[p].replace(b"\0", b" ").decode(errors="replace") for p in found]


def test_the_ui_leaves_mlflow_s_job_executor_off_unless_asked(monkeypatch):
    from ganflow.ui import JOB_EXECUTION, server_env

    monkeypatch.delenv(JOB_EXECUTION, raising=False)
    assert server_env()[JOB_EXECUTION] == "false"
    monkeypatch.setenv(JOB_EXECUTION, "true")
    assert server_env()[JOB_EXECUTION] == "true"


@pytest.mark.slow
@pytest.mark.parametrize("stop, workers", [("SIGINT", 1), ("SIGTERM", 1), ("SIGHUP", 2)])
def test_ganflow_ui_serves_the_store_and_points_at_the_newest_run(workdir, stop, workers):
    # Stopped by Ctrl-C, by kill or a supervisor (SIGTERM) or by its terminal closing
    # (SIGHUP), it takes the MLflow server and its workers with it.
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    uri = f"sqlite:///{workdir}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment("ganflow")
        with mlflow.start_run():
            pass
        with mlflow.start_run() as newest:
            mlflow.log_metric("d_loss", 0.5, step=1)
    finally:
        mlflow.set_tracking_uri(None)
    port = free_port()
    # Ctrl-C as a terminal gives it: a suite started in the background (`pytest &`, nohup)
    # ignores SIGINT, and a child that inherits that would ignore the test's SIGINT.
    proc = subprocess.Popen([sys.executable, "-m", "ganflow", "ui", "--tracking-uri", uri,
                             "--port", str(port), "--workers", str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=workdir,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        base = f"http://127.0.0.1:{port}"
        assert lines[1].strip() == (
            f"newest run: {base}/#/experiments/{newest.info.experiment_id}/runs/"
            f"{newest.info.run_id}?workflowType=machine_learning")
        api = f"{base}/api/2.0/mlflow/runs/get?run_id={newest.info.run_id}"
        for _ in range(120):  # until the server answers
            try:
                with urllib.request.urlopen(api, timeout=2) as answer:
                    body = answer.read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert '"d_loss"' in body
        # MLflow's GenAI job executor stays off: the server and its web workers, no Huey
        # consumers (7 more processes, about 20 CPU-seconds at each start).
        commands = descendants(proc.pid)
        assert [c for c in commands if "uvicorn" in c], commands
        # One worker serves in uvicorn's own process; more are each a process of their own.
        assert len([c for c in commands if "multiprocessing-fork" in c]) == (
            0 if workers == 1 else workers), commands
        assert not [c for c in commands if "huey" in c], commands
    finally:
        proc.send_signal(getattr(signal, stop))
        assert proc.wait(timeout=30) == 0
    with socket.socket() as s:  # the server went with it
        assert s.connect_ex(("127.0.0.1", port)) != 0
