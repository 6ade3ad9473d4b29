"""Training under tf.distribute: MirroredStrategy over 2 logical CPU devices (standing in for
2 GPUs) against one device, and mixed precision. Each case runs in its own process: devices
and op determinism are set once per process, before TensorFlow starts."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from mlflow import MlflowClient

import ganflow
from ganflow.data import training_pipeline
from ganflow.devices import dtype_policy

from conftest import TINY, free_port
from test_gan import SHAPE, numbered_source
from test_step import compile_gan, linear_discriminator

# Trains the dcgan recipe on the digits for 4 steps of a global batch of 16 under a strategy
# (argv[2]: 2 replicas of 8 each) and on one device, from the same seed (same initial
# weights, data and noise), and prints the largest difference of any weight (G, D, the EMA
# copy, both optimizers). With argv[3], saves the distributed run's weights there.
SAME_AS_ONE_DEVICE = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    from ganflow import devices
    # A list of cases' flags, run one after another in this one process (each process spends
    # 10 CPU-s importing TensorFlow and MLflow); prints a list of their results.
    cases, strategy = json.loads(sys.argv[1]), sys.argv[2]
    if strategy == "mirrored":
        devices.split_cpu(2)
    import tensorflow as tf
    from ganflow.plugins import load_plugins
    from ganflow.prepare import prepare
    from ganflow.resolve import configure, resolve

    # Grappler's graph rewrites are TensorFlow's, not what this compares, and take a third of
    # each run's time here (the StyleGAN2 step: 30 s to trace and run under two replicas
    # with them, 21 s without): both runs get the graphs as traced.
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    plugins = load_plugins()

    def train(flags, strategy):
        config = configure(plugins, "dcgan", {
            "precision": "float32", **flags, "batch_size": 16, "eval_every": 0, "ema": 0.9,
            "strategy": strategy})
        prepared = prepare(resolve(config, plugins))
        gan = prepared.gan
        start = [v.numpy() for v in gan.generator.weights]
        # The same global batches in the same order for both: the first examples, unshuffled.
        batches = prepared.source.dataset().take(4 * prepared.per_step).batch(
            prepared.per_step)
        logs = gan.fit(batches, epochs=1, steps_per_epoch=4, verbose=0).history
        weights = [v.numpy() for v in (gan.generator.weights + gan.discriminator.weights
                   + gan.ema_generator.weights + gan.d_optimizer.variables
                   + gan.g_optimizer.variables + list(gan.plugin_state.values()))]
        moved = max(float(np.max(np.abs(a - b))) for a, b in zip(start, weights))
        return gan, weights, {k: float(np.squeeze(v[-1])) for k, v in logs.items()}, moved

    def compare(flags):
        # The distributed run first: MultiWorkerMirroredStrategy starts before anything else.
        two, two_weights, two_logs, moved = train(flags, strategy)
        one, one_weights, one_logs, _ = train(flags, "default")
        networks = len(one.generator.weights + one.discriminator.weights)  # the list's head
        if len(sys.argv) > 3:  # one file per worker
            task = json.loads(os.environ.get("TF_CONFIG", '{"task": {"index": 0}}'))["task"]
            np.savez(f"{sys.argv[3]}.{task['index']}.npz", *two_weights)
        return {
            "replicas": two.distribute_strategy.num_replicas_in_sync,
            "weights": len(one_weights),
            "max_diff": max(float(np.max(np.abs(a - b)))
                            for a, b in zip(one_weights, two_weights)),
            "networks_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(
                one_weights[:networks], two_weights[:networks])),
            "moved": moved,
            "steps_done": int(two.steps_done.numpy()),
            "logs": [one_logs, two_logs],
        }

    tf.config.experimental.enable_op_determinism()
    print(json.dumps([compare(flags) for flags in cases]))
""")


def run_script(script, *args, timeout=300):
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


CASES = {
    # the recipe: non-saturating loss with R1, a gradient penalty (double backprop)
    "non-saturating+r1": {},
    "wgan+lazy-r2": {"loss": "wgan:gp=0", "regularizers": ["r2:gamma=1,every=2"]},  # on fakes
    # ADA's state follows the global batch: an identity pipeline (no shift at all) whose p and
    # r_t, adjusted after every update, must be those of one device.
    "ada-state": {"augment": ["ada:pipe=xint,xint_max=0.0,interval=1,target=0.0,kimg=0.05"]},
    # Spectral norm's u and PacGAN's packs (consecutive examples: a replica's share of an
    # even batch packs as one device's does).
    "sn-sigma-grad+pack": {"arch": "dcgan:sn,sigma_grad=true,pack=2"},
}


@pytest.mark.slow
def test_two_replicas_train_as_one_device_on_the_same_global_batch():
    # One process for every case (pytest-xdist would run a shared fixture once per worker),
    # so also: runs one after another in a process share its MirroredStrategy (a second
    # one's first all-reduce of another shape aborted, see devices._mirrored).
    results = run_script(SAME_AS_ONE_DEVICE, json.dumps(list(CASES.values())), "mirrored",
                         timeout=600)
    assert len(results) == len(CASES)
    for case, result in zip(CASES, results):
        assert_same_as_one_device(result, case)


def assert_same_as_one_device(result, case=""):
    assert result["replicas"] == 2, case
    assert result["steps_done"] == 4, case  # a global step counts once, not once per replica
    assert result["moved"] > 1e-3, case  # it trained
    assert result["max_diff"] < 1e-5, (case, result)  # every weight and optimizer slot
    one, two = result["logs"]
    for name, value in one.items():  # metrics are global means, not per-replica values
        assert two[name] == pytest.approx(value, rel=1e-4, abs=1e-5), (case, name)


class TinyLoss(ganflow.StepLoss):
    """The non-saturating loss times 1e-8: in float16 (smallest step 6e-8) its gradients
    underflow to zero unless the loss is scaled up first."""

    def d_loss(self, step):
        return 1e-8 * (ops.mean(ops.softplus(-step.real_logits))
                       + ops.mean(ops.softplus(step.fake_logits)))

    def g_loss(self, step):
        return 1e-8 * ops.mean(ops.softplus(-step.fake_logits))


def test_float16_trains_where_its_unscaled_gradients_underflow():
    moved = {}
    for policy in ("float32", "mixed_float16"):
        with dtype_policy(policy):
            gan = compile_gan(TinyLoss(), lr=1e6)
        start = gan.discriminator.get_weights()[0].copy()
        gan.fit(training_pipeline(numbered_source(16), 4, seed=0), epochs=1, steps_per_epoch=2,
                verbose=0)
        moved[policy] = gan.discriminator.get_weights()[0] - start
    # ganflow wrapped both optimizers in a LossScaleOptimizer, as Keras's compile does for one.
    assert isinstance(gan.d_optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(gan.g_optimizer, keras.optimizers.LossScaleOptimizer)
    assert np.abs(moved["float32"]).max() > 1e-3
    np.testing.assert_allclose(moved["mixed_float16"], moved["float32"], rtol=0.02,
                               atol=1e-3 * np.abs(moved["float32"]).max())
    # Without the scaling, the same loss's float16 gradients are exactly zero.
    with dtype_policy("mixed_float16"):
        discriminator = linear_discriminator()
    x = np.random.default_rng(0).uniform(-1, 1, (4, *SHAPE)).astype("float32")
    with tf.GradientTape() as tape:
        loss = 1e-8 * ops.mean(ops.softplus(ops.cast(discriminator(x), "float32")))
    grads = tape.gradient(loss, discriminator.trainable_variables)
    assert all(not np.any(g.numpy()) for g in grads)


def test_precision_auto_is_bfloat16_where_the_cpu_has_it():
    from ganflow.devices import cpu_has_bfloat16, resolve_precision

    assert resolve_precision("float32") == "float32"
    expected = "mixed_bfloat16" if cpu_has_bfloat16() else "float32"
    assert resolve_precision("auto") == expected


def ganflow(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ganflow", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_ganflow_run_on_two_replicas_logs_registers_and_resumes(workdir):
    # bfloat16 on every machine (emulated where the CPU lacks it): what the recipe's
    # --precision auto picks on a CPU with AVX-512 BF16, such as this project's.
    # Metric windows of 3 steps, the epoch's: the recipe's 8 per call into TensorFlow would
    # be 3 here, and a loop of several steps per call fails on several replicas.
    done = ganflow("run", *TINY, "--eval-every", "0", "--strategy", "mirrored",
                   "--cpu-devices", "2", "--ema", "0.99", "--precision", "mixed_bfloat16",
                   "--log-every", "3", cwd=workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    params = run.data.params
    assert (params["strategy"], params["replicas"], params["dtype_policy"]) == (
        "mirrored", "2", "mixed_bfloat16")
    # A step counts once: 2 epochs of 3 steps, each epoch's mean logged at its last step.
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch/mean_d_loss")]
    assert steps == [3, 6]
    (version,) = client.search_model_versions("name = 'dcgan-generator'")
    assert version.run_id == run.info.run_id
    assert (workdir / "ganflow-runs" / run.info.run_id / "checkpoints").is_dir()
    sampled = ganflow("sample", "models:/dcgan-generator@latest", "-n", "4", "-o", "s.png",
                      cwd=workdir)
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    # Resumed, it restores the mirrored variables from the checkpoint and goes on, on 2
    # replicas again (the run's settings), logging no step twice.
    resumed = ganflow("resume", run.info.run_id, "--epochs", "3", cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch/mean_d_loss")]
    assert steps == [3, 6, 9]
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "15"], "--batch-size 15 does not split evenly between 2 replicas: use "
                             "a multiple of 2"),
    (["--jit", "on"], "--jit on with --strategy mirrored works on GPUs, not on CPU devices"),
])
def test_what_two_cpu_replicas_cannot_do_is_one_line(workdir, args, message):
    done = ganflow("run", *TINY, "--strategy", "mirrored", "--cpu-devices", "2", *args,
                   cwd=workdir)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"Error: {message}")
    assert not (workdir / "mlflow.db").exists()  # nothing started


def cluster(count: int) -> list[str]:
    """TF_CONFIG for each of ``count`` workers on 127.0.0.1, worker 0 the chief."""
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(count)]
    return [json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}})
            for i in range(count)]


def start_workers(command: list[str], cwd, tmp=None) -> list[subprocess.Popen]:
    """The same command in one process per worker of a new 2-worker cluster; ``tmp``: their
    TMPDIR."""
    env = {**os.environ, **({"TMPDIR": str(tmp)} if tmp else {})}
    return [subprocess.Popen([sys.executable, *command], cwd=cwd, text=True,
                             env={**env, "TF_CONFIG": spec},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for spec in cluster(2)]


def finish(procs, timeout=300) -> list[tuple[int, str, str]]:
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        done.append((proc.returncode, out, err))
    return done


@pytest.mark.slow
def test_two_worker_processes_stay_in_step_and_train_as_one_device(tmp_path):
    # Two real processes, a MultiWorkerMirroredStrategy over 127.0.0.1: each trains the
    # dcgan recipe for 4 global steps of 16 (8 on each worker), then alone on one device.
    procs = start_workers(["-c", SAME_AS_ONE_DEVICE, "[{}]", "multiworker", "WEIGHTS"], tmp_path)
    results = []
    for returncode, out, err in finish(procs):
        assert returncode == 0, err[-3000:]
        results += json.loads(out.strip().splitlines()[-1])  # one case
    for result in results:
        assert_same_as_one_device(result)
    # Both workers hold the same weights and optimizer state, bit for bit.
    chief, other = (np.load(tmp_path / f"WEIGHTS.{i}.npz") for i in (0, 1))
    assert len(chief.files) == results[0]["weights"]
    for name in chief.files:
        np.testing.assert_array_equal(chief[name], other[name])


@pytest.mark.slow
def test_a_lost_worker_stops_the_cluster_and_every_worker_resumes_from_the_chief(workdir):
    scratch = workdir / "tmp"
    scratch.mkdir()
    # The recipe's own settings (metric windows of 8 steps) with epochs of 16: two windows an
    # epoch, as users run it (one step per call into TensorFlow across workers).
    chief, other = start_workers(
        ["-m", "ganflow", "run", "--epochs", "60", "--steps-per-epoch", "16", "--eval-every",
         "0", "-q", "--strategy", "multiworker"], workdir, scratch)
    deadline = time.monotonic() + 240
    while not list(workdir.glob("ganflow-runs/*/checkpoints/ckpt-16.index")):
        assert chief.poll() is None and other.poll() is None, finish([chief, other])
        assert time.monotonic() < deadline
        time.sleep(0.2)
    other.kill()  # worker 1 is gone mid-run, without a word
    other.wait()
    ((returncode, out, err),) = finish([chief], timeout=180)
    assert returncode == 75, err[-3000:]
    (run_dir,) = (workdir / "ganflow-runs").iterdir()
    run_id = run_dir.name
    last = err.strip().splitlines()[-1]
    assert last.startswith("Error: a worker of the cluster stopped answering (UnavailableError:")
    assert f"start each again with: ganflow resume {run_id}" in last
    assert "Traceback" not in err
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["ganflow.failure"].startswith("a worker of the cluster stopped")
    assert not client.search_model_versions("name = 'dcgan-generator'")

    killed = set(scratch.glob("ganflow-worker-*"))  # what SIGKILL left of worker 1's scratch

    # The same command on every worker: each restores the chief's newest checkpoint.
    results = finish(start_workers(["-m", "ganflow", "resume", run_id, "--epochs", "4", "-q"],
                                   workdir, scratch))
    for returncode, out, err in results:
        assert returncode == 0, err[-3000:]
    assert "Worker 1 (of 2 workers): trained to step 64" in results[1][1]
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.params["replicas"] == "2"
    # Only the chief logged: each epoch's mean once, each step window once.
    steps = [m.step for m in client.get_metric_history(run_id, "epoch/mean_d_loss")]
    assert steps == [16, 32, 48, 64]
    windows = [m.step for m in client.get_metric_history(run_id, "d_loss")]
    assert windows == list(range(8, 65, 8))
    (version,) = client.search_model_versions("name = 'dcgan-generator'")
    assert version.run_id == run_id
    assert set(scratch.glob("ganflow-worker-*")) == killed  # worker 1 cleaned up its scratch


@pytest.mark.parametrize("tf_config, message", [
    (None, "--strategy multiworker needs TF_CONFIG, the cluster's addresses and this worker's "
           "place in it, e.g. TF_CONFIG="),
    ("{cluster: 1}", "TF_CONFIG is not a cluster spec (Expecting property name enclosed in "
                     "double quotes"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 1}}',
     "TF_CONFIG is not a cluster spec (IndexError: list index out of range)"),
    ('{"cluster": {"worker": ["127.0.0.1:1"], "ps": ["127.0.0.1:2"]}, '
     '"task": {"type": "ps", "index": 0}}',
     "TF_CONFIG is not a cluster spec (only tasks of type chief and worker take part)"),
    ('{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:port"]}, '
     '"task": {"type": "worker", "index": 0}}',
     "TF_CONFIG is not a cluster spec (worker 1's address '127.0.0.1:port' is not HOST:PORT "
     "with a port number)"),
])
def test_a_multiworker_run_without_a_sound_tf_config_is_refused_on_one_line(
        cli, workdir, monkeypatch, tf_config, message):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    result = cli("run", *TINY, "--strategy", "multiworker")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"Error: {message}")
    assert not (workdir / "mlflow.db").exists()  # nothing started


@pytest.mark.slow
def test_a_worker_whose_peer_never_starts_says_so_and_gives_up(workdir):
    spec = cluster(2)[0]  # worker 0 of two; worker 1 is never started
    peer = json.loads(spec)["cluster"]["worker"][1]
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "ganflow", "run", *TINY, "--strategy",
                           "multiworker", "--worker-timeout", "12"], cwd=workdir, text=True,
                          env={**os.environ, "TF_CONFIG": spec}, capture_output=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL  # TensorFlow's wait can be ended no other way
    said = [line for line in proc.stderr.splitlines() if line.startswith(("worker", "Error"))]
    assert said == [
        f"worker 0 is waiting for worker 1 ({peer}) to join the cluster: 10 s so far, giving "
        "up after 12 s",
        f"Error: worker 0: worker 1 ({peer}) did not join the cluster in 12 s: start every "
        "worker with the same TF_CONFIG cluster and its own task, or give them longer with "
        "--worker-timeout"]
    assert time.monotonic() - started < 60
    assert not (workdir / "mlflow.db").exists()  # nothing was made
