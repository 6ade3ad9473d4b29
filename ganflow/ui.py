"""``ganflow ui``: the MLflow UI on a store, as a child process that goes when it is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

# MLflow 3's server starts a job executor for its GenAI features (scorers, prompt
# optimization): 7 Huey consumer processes, about 20 CPU-seconds at each start here (27-32
# CPU-s with it, 9 without), none of it used by GAN runs and models. A user who wants those
# jobs sets the variable to true.
JOB_EXECUTION = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"


def server_env() -> dict[str, str]:
    """The environment for an MLflow server or UI started by ganflow: the caller's, with the
    job executor off unless the caller set it."""
    return {JOB_EXECUTION: "false", **os.environ}


def serve(uri: str, port: int, workers: int = 1) -> int:
    """Run ``mlflow ui`` on ``uri`` at 127.0.0.1:``port`` with ``workers`` web server
    processes until it ends (its exit code) or this process is stopped by SIGINT, SIGTERM or
    SIGHUP (0, the server and its children stopped).

    The server gets its own process group: `mlflow ui` serves from a child process of its
    own, and both must go when this command is stopped (Ctrl-C reaches the whole group from
    a terminal, but not when this process alone gets SIGINT)."""
    from ganflow.signals import terminate_as_interrupt

    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                               "--host", "127.0.0.1", "--port", str(port),
                               "--workers", str(workers)],
                              start_new_session=True, env=server_env())
    try:
        with terminate_as_interrupt():  # SIGTERM (kill, a supervisor), SIGHUP as Ctrl-C
            return server.wait()
    except KeyboardInterrupt:
        stop_group(server, grace=10.0)
        return 0


def stop_group(proc, grace: float) -> None:
    """SIGTERM to ``proc``'s process group; SIGKILL to what is left of it after ``grace``
    seconds (and 2 more for the stragglers once ``proc`` itself is gone)."""

    def signal_group(sig) -> bool:
        try:
            os.killpg(proc.pid, sig)
            return True
        except ProcessLookupError:  # nobody left in the group
            return False

    signal_group(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 2.0
    while signal_group(0) and time.monotonic() < deadline:
        time.sleep(0.1)
    signal_group(signal.SIGKILL)
    proc.wait()
