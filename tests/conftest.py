import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import mlflow  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from ganflow.cli import main  # noqa: E402
from ganflow.plugins import load_plugins  # noqa: E402

# A run small enough for tests: a few generator updates on the bundled digits, evaluated
# (as the dcgan recipe does) on 200 samples instead of 10,000.
TINY = ["--epochs", "2", "--steps-per-epoch", "3", "--batch-size", "16", "--eval-samples", "200",
        "-q"]


def pytest_configure(config):
    """The suite started with SIGINT or SIGHUP ignored (under ``nohup``, or as a shell's
    background job) would pass that on to every ``ganflow`` it starts, and ganflow keeps an
    inherited-ignored SIGINT ignored, as a background job should: the tests that stop a run
    with Ctrl-C or a closed terminal would see it go on. Their children get the defaults."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


def pytest_collection_modifyitems(items):
    """The long tests (marked slow) first, in their files' order: the two test processes
    (pytest-xdist) then end on short tests together, rather than one idling while the other
    finishes a test of a minute."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session", autouse=True)
def feature_cache(tmp_path_factory):
    """One cache of trained domain classifiers for the whole session, never the user's.

    Under pytest-xdist the workers share it (the base temp folder's parent is the session's):
    the first to need a classifier trains it while the others wait on its lock."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        path = tmp_path_factory.getbasetemp().parent / "ganflow-cache"
        path.mkdir(exist_ok=True)
    else:
        path = tmp_path_factory.mktemp("ganflow-cache")
    saved = os.environ.get("GANFLOW_CACHE_DIR")
    os.environ["GANFLOW_CACHE_DIR"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("GANFLOW_CACHE_DIR", None)
    else:
        os.environ["GANFLOW_CACHE_DIR"] = saved


@pytest.fixture(autouse=True)
def no_op_determinism_left_behind():
    """A run with --deterministic turns TensorFlow's op determinism on for the whole process,
    and Keras then quietly compiles without XLA: a later test of the compiled step in the same
    test process would compare the plain step with itself. TensorFlow exports no way to turn it
    off, so this uses its own tests' one (tensorflow/python/framework/config.py)."""
    yield
    if "tensorflow" not in sys.modules:
        return
    from tensorflow.python.framework import config

    if config.is_op_determinism_enabled():
        config.disable_op_determinism()


@pytest.fixture(scope="session")
def plugins():
    return load_plugins()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory with its own MLflow store, as a user's project folder."""
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    yield tmp_path
    mlflow.end_run()
    mlflow.set_tracking_uri(None)
    # set_experiment exports MLFLOW_EXPERIMENT_ID to os.environ (and so to child processes):
    # an id from this test's store must not reach the next test's.
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    mlflow.tracking.fluent._active_experiment_id = None


@pytest.fixture
def offline(monkeypatch):
    """No network, whatever this machine has: downloads must fail fast with advice.

    Plugins look ``ganflow.reachable`` up when they call it, so this is what they see."""
    import ganflow

    monkeypatch.setattr(ganflow, "reachable", lambda host, port=443, timeout=5.0: False)


@pytest.fixture
def cli():
    """Invoke the ganflow CLI in-process; returns click's Result (exit_code, stdout, stderr)."""

    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_plugin(path, source):
    """Write a plugin module file for --plugin-module."""
    path.write_text(source)
    return str(path)


def image_steps(client, run_id, key="samples"):
    """The steps of the MLflow images ``key`` of a run (the UI's image slider), in order."""
    names = [a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run_id, "images")]
    return sorted(int(name.split("+")[2]) for name in names
                  if name.startswith(f"{key}+step+") and name.endswith(".png"))


def trained(plugins, recipe, flags, steps):
    """A recipe's GAN as ``ganflow run`` builds it (float32, batch 8, no evaluation, ``flags``
    on top), its trainable variables and their values, then the history of ``steps`` real
    training steps on the recipe's own data: (gan, variables, values before, history)."""
    from ganflow.prepare import prepare
    from ganflow.resolve import configure, resolve

    config = configure(plugins, recipe, {"precision": "float32", "batch_size": 8,
                                         "eval_every": 0, **flags})
    prepared = prepare(resolve(config, plugins))
    gan = prepared.gan
    variables = gan.generator.trainable_variables + gan.discriminator.trainable_variables
    before = [v.numpy().copy() for v in variables]
    batches = prepared.source.dataset().take(steps * prepared.per_step).batch(prepared.per_step)
    history = gan.fit(batches, epochs=1, steps_per_epoch=steps, verbose=0).history
    return gan, variables, before, history
