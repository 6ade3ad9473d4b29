"""Where and how a run computes: its ``tf.distribute`` strategy, and its networks' dtype policy.

``--strategy mirrored`` puts a replica of both networks on every GPU of the machine (or on each
of ``--cpu-devices`` logical CPUs, to try distribution without GPUs); Keras's ``fit`` then
splits each global batch between the replicas and ``GAN`` sums their gradients (see
``GAN._replica_scale``). ``--precision`` is the Keras dtype policy the networks are built
under; D's logits and every loss stay float32 (``Step.discriminate``, ``GAN._total``).
"""

from __future__ import annotations

import functools
import gc
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass

from ganflow.errors import GanflowError, UsageError, first_line

TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')


@dataclass(frozen=True)
class Worker:
    """This process's place in a ``--strategy multiworker`` cluster (from ``TF_CONFIG``)."""

    task: str  # "chief" or "worker"
    index: int
    count: int  # the cluster's workers, the chief included
    chief: bool  # the one that logs, registers and keeps checkpoints

    @property
    def name(self) -> str:
        return f"{self.task} {self.index}"


def worker(strategy: str) -> Worker | None:
    """Where ``TF_CONFIG`` puts this process, under ``--strategy multiworker`` (None under
    the others). The chief is the task of type ``chief``, else ``worker`` 0, as in
    TensorFlow's multi-worker guide."""
    if strategy != "multiworker":
        return None
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        raise UsageError("--strategy multiworker needs TF_CONFIG, the cluster's addresses and "
                         f"this worker's place in it, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}' "
                         "(docs/running.md, 'Several machines'); on one machine use --strategy mirrored")
    try:
        spec = json.loads(text)
        cluster, task = spec["cluster"], spec["task"]
        kind, index = task["type"], int(task["index"])
        if kind not in ("chief", "worker") or set(cluster) - {"chief", "worker"}:
            raise ValueError("only tasks of type chief and worker take part")
        if not cluster[kind][index]:
            raise ValueError(f"{kind} {index} has no address")
        for task_type, address in _addresses(cluster):
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{task_type}'s address {address!r} is not HOST:PORT with a "
                                 "port number")
        count = sum(len(cluster.get(k, ())) for k in ("chief", "worker"))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        reason = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        raise UsageError(f"TF_CONFIG is not a cluster spec ({reason}): write e.g. "
                         f"TF_CONFIG='{TF_CONFIG_EXAMPLE}'") from None
    chief = kind == "chief" or (index == 0 and "chief" not in cluster)
    return Worker(kind, index, count, chief)


def cluster_size() -> int:
    """The processes of ``TF_CONFIG``'s cluster: 1 without one (or with one that does not
    parse, which ``worker`` refuses)."""
    try:
        return max(1, len(_addresses(json.loads(os.environ.get("TF_CONFIG") or "{}")
                                     .get("cluster", {}))))
    except (ValueError, AttributeError, TypeError):
        return 1


def _addresses(cluster: dict) -> list[tuple[str, str]]:
    """("worker 1", "host:port") for every task of a cluster spec."""
    return [(f"{kind} {i}", str(address)) for kind in ("chief", "worker")
            for i, address in enumerate(cluster.get(kind, ()))]


WAIT_SAY_EVERY = 10.0  # seconds between the lines a worker waiting for the others prints

# The watcher of a worker joining its cluster: a process of its own, since TensorFlow blocks
# in C++ holding the interpreter's lock (no thread or signal handler of the worker runs).
_WATCHER = """
import os, signal, socket, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the worker's to act on
me, parent, timeout, every = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
others = [a.split("=", 1) for a in sys.argv[5:]]

def absent():
    gone = []
    for name, address in others:
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=1.0).close()
        except OSError:
            gone.append(f"{name} ({address})")
    return gone

started = time.monotonic()
while True:
    deadline = time.monotonic() + min(every, max(timeout - (time.monotonic() - started), 0.01))
    while time.monotonic() < deadline:
        if os.getppid() != parent:  # the worker is gone (a signal's default action)
            sys.exit(0)
        time.sleep(0.2)
    waited, gone = time.monotonic() - started, absent()
    if waited >= timeout:
        who = ", ".join(gone) or "the other workers (they accept connections, but have not joined)"
        print(f"Error: {me}: {who} did not join the cluster in {timeout:.0f} s: start every "
              "worker with the same TF_CONFIG cluster and its own task, or give them longer "
              "with --worker-timeout", file=sys.stderr, flush=True)
        os.kill(parent, signal.SIGKILL)
        sys.exit(0)
    print(f"{me} is waiting for {', '.join(gone) or 'the other workers'} to join the cluster: "
          f"{waited:.0f} s so far, giving up after {timeout:.0f} s", file=sys.stderr, flush=True)
"""


def join_cluster(make, timeout: float):
    """``make()``, which builds a MultiWorkerMirroredStrategy and blocks in TensorFlow until
    every worker of ``TF_CONFIG`` has joined (for ever, holding the interpreter's lock), with
    a watcher process that says every ``WAIT_SAY_EVERY`` seconds which workers do not answer
    yet and, after ``timeout`` seconds, says so in one line and ends this process (SIGKILL:
    nothing else can end it then; nothing was made yet). Ctrl-C, SIGTERM and SIGHUP end it
    at once meanwhile, by their default action."""
    import signal
    import subprocess
    import sys

    spec = json.loads(os.environ["TF_CONFIG"])
    me = f"{spec['task']['type']} {spec['task']['index']}"
    others = [f"{name}={address}" for name, address in _addresses(spec["cluster"]) if name != me]
    watcher = subprocess.Popen([sys.executable, "-c", _WATCHER, me, str(os.getpid()),
                                str(timeout), str(WAIT_SAY_EVERY), *others])
    handlers = {signum: signal.signal(signum, signal.SIG_DFL)
                for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
                if signal.getsignal(signum) != signal.SIG_IGN}
    try:
        return make()
    finally:
        watcher.kill()
        watcher.wait()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def split_cpu(count: int) -> None:
    """Make ``count`` logical CPU devices of the physical CPU: possible only before
    TensorFlow has initialized its devices, so call this first."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration()] * count
    try:
        tf.config.set_logical_device_configuration(cpu, wanted)
    except RuntimeError:  # devices already initialized in this process
        have = len(tf.config.list_logical_devices("CPU"))
        if have != count:
            raise UsageError(f"--cpu-devices {count}: TensorFlow already runs on {have} CPU "
                             "device(s) in this process; start a new one") from None


class WorkerLost(GanflowError):
    """A worker of a ``--strategy multiworker`` cluster stopped answering: training stopped
    on every worker, to be resumed from the chief's last checkpoint."""

    exit_code = 75  # EX_TEMPFAIL: start the workers again

    @classmethod
    def during(cls, exc: BaseException, store, run_id: str | None) -> WorkerLost:
        """What the survivors say (``store``: the chief's ``Checkpoints``, else None)."""
        _close_thread_pools()
        if store is not None:
            latest = store.manager.latest_checkpoint
            where = (f"the last checkpoint is {os.path.basename(latest)} in {store.directory}"
                     if latest else "there is no checkpoint yet: start the run again")
        else:
            where = "the chief keeps the checkpoints"
        run = run_id or "RUN_ID (the id the chief printed)"
        return cls(f"a worker of the cluster stopped answering ({_reason(exc)}): training "
                   f"stopped on every worker; {where}; when every worker can run, start each "
                   f"again with: ganflow resume {run}")


class WorkerStopped(GanflowError):
    """A worker that is not the chief was stopped by Ctrl-C or SIGTERM."""

    exit_code = 130


def _close_thread_pools() -> None:
    """Close the thread pools TensorFlow's eager all-reduce left open when its collective
    failed: collected at exit, each would print a traceback there ("Bad file descriptor")."""
    from multiprocessing.pool import ThreadPool

    for obj in gc.get_objects():
        if isinstance(obj, ThreadPool):
            obj.close()


def _reason(exc: BaseException) -> str:
    """What TensorFlow says went wrong, without where in the graph (node names, the stack
    of the op that failed)."""
    text = getattr(exc, "message", None) or str(exc)
    said = [line for line in text.splitlines() if line.strip()
            and not line.startswith((" ", "\t", "Graph execution error", "Detected at node"))]
    said = re.sub(r"\{\{[^}]*\}\}|\[\[.*?\]\]|\[Op:[^\]]*\]", " ", " ".join(said))
    said = said.split("The error could be from a previous operation")[0]
    return f"{type(exc).__name__}: {' '.join(said.split()) or first_line(exc)}"[:240]


def lost_peer_errors() -> tuple[type[BaseException], ...]:
    """What TensorFlow raises in the survivors when a worker of a collective dies: its
    health check aborts the collectives with UNAVAILABLE; a collective under way may fail on
    its own first."""
    import tensorflow as tf

    return (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
            tf.errors.CancelledError, tf.errors.AbortedError)


def make_strategy(name: str, cpu_devices: int | None = None, worker_timeout: float = 120.0):
    """The ``tf.distribute`` strategy ``--strategy name`` means on this machine (under
    ``multiworker``, once every worker has joined: see ``join_cluster``)."""
    import tensorflow as tf

    if cpu_devices:
        split_cpu(cpu_devices)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        return _mirrored(tuple(d.name for d in (gpus or tf.config.list_logical_devices("CPU"))))
    if name == "multiworker":
        worker(name)  # TF_CONFIG is there and makes sense
        return join_cluster(tf.distribute.MultiWorkerMirroredStrategy, worker_timeout)
    raise UsageError(f"--strategy {name}: unknown; use default, mirrored or multiworker")


@functools.cache
def _mirrored(devices: tuple[str, ...]):
    """One MirroredStrategy per set of devices in a process: a second one numbers its
    collectives as the first did, and TensorFlow, which keeps the first's, aborts the second's
    first all-reduce of another shape ("Shape mismatch in the collective instance")."""
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(list(devices))


def replicas() -> int:
    """Replicas of the strategy in scope (1 outside any)."""
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def across_workers() -> bool:
    """Whether the strategy in scope spans several worker processes (multiworker, with a
    cluster in TF_CONFIG)."""
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        strategy.extended._in_multi_worker_mode()


def replica():
    """(this replica's index, the number of replicas) in a ``tf.distribute`` replica context
    (the index a scalar tensor); ``(0, 1)`` outside one, or with one replica."""
    import tensorflow as tf

    count = replicas()
    context = tf.distribute.get_replica_context()
    if count == 1 or context is None:  # None: cross-replica context
        return 0, 1
    return context.replica_id_in_sync_group, count


def replica_share(draw, batch: int):
    """This replica's ``batch`` of ``draw(n)``, a random draw of n examples: every replica
    draws the global batch's from the same seed and keeps its own slice, so replicas get
    different draws, those one device would make for the global batch."""
    index, count = replica()
    drawn = draw(batch * count)
    return drawn if count == 1 else drawn[index * batch : (index + 1) * batch]


def replica_sum(x):
    """``x`` summed over the replicas of the training step under way (itself with one
    replica, or outside a step): a statistic each replica then holds alike, so that plugin
    state updated from it stays the same on every replica."""
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return x
    return context.all_reduce("SUM", x)


def resolve_precision(precision: str) -> str:
    """``--precision`` as a Keras dtype policy name: ``auto`` is mixed_bfloat16 where the
    hardware computes in bfloat16 (a GPU of compute capability 8 or more, or a CPU with
    AVX-512 BF16 or AMX), else float32."""
    if precision != "auto":
        return precision
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get(
            "compute_capability", (0, 0))
        return "mixed_bfloat16" if capability >= (8, 0) else "float32"
    return "mixed_bfloat16" if cpu_has_bfloat16() else "float32"


def cpu_has_bfloat16() -> bool:
    """Whether this CPU has bfloat16 arithmetic (x86's avx512_bf16 or amx_bf16 flags)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            flags = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


@contextmanager
def dtype_policy(name: str):
    """Layers made inside compute with the dtype policy ``name`` (their weights float32)."""
    import keras

    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)
