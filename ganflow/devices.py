"""Where and how a run computes: its ``tf.distribute`` strategy, and its networks' dtype policy.

``--strategy mirrored`` puts a replica of both networks on every GPU of the machine (or on each
of ``--cpu-devices`` logical CPUs, to try distribution without GPUs); Keras's ``fit`` then
splits each global batch between the replicas and ``GAN`` sums their gradients (see
``GAN._replica_scale``). ``--precision`` is the Keras dtype policy the networks are built
under; D's logits and every loss stay float32 (``Step.discriminate``, ``GAN._total``).
"""

from __future__ import annotations

from contextlib import contextmanager

from ganflow.errors import UsageError


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


def make_strategy(name: str, cpu_devices: int | None = None):
    """The ``tf.distribute`` strategy ``--strategy name`` means on this machine."""
    import tensorflow as tf

    if cpu_devices:
        split_cpu(cpu_devices)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    raise UsageError(f"--strategy {name}: unknown; use default or mirrored")


def replicas() -> int:
    """Replicas of the strategy in scope (1 outside any)."""
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def replica():
    """(this replica's index, the number of replicas) in a ``tf.distribute`` replica context
    (the index a scalar tensor); ``(0, 1)`` outside one, or with one replica."""
    import tensorflow as tf

    count = replicas()
    context = tf.distribute.get_replica_context()
    if count == 1 or context is None:  # None: cross-replica context
        return 0, 1
    return context.replica_id_in_sync_group, count


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
