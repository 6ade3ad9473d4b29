"""Where a training step's time goes, from TensorFlow's profiler: ganflow's ``GAN.train_step``
against the keras.io-style step of bench/bench_speed.py, on the same networks (the TensorFlow
DCGAN tutorial's), batch and algorithm.

    python bench/profile_step.py                     # float32, XLA off, batch 256
    python bench/profile_step.py --precision mixed_bfloat16 --steps 10

Each step is warmed up, then ``--steps`` steps are traced with ``tf.profiler.experimental``
and the trace (an XSpace) is read back: every kernel TensorFlow's executor ran on the CPU, with
its name and duration, summed per step over the compute threads (kernels run at once on
several threads, so kernel time exceeds wall time). The kernels are grouped by the layer they
belong to (forward and gradient): convolutions, dense layers, batch normalisation, dropout,
activations; and the rest (the losses, both optimizers' updates, the noise, the metrics). The
layers' kernels are the networks' arithmetic, which any implementation of the same algorithm
on the same networks runs; only the rest is the engine's to save. Wall time per step is the
traced step function's.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

# A kernel's group, from the layer in its name ("generator_1/batch_normalization_2/moments/
# mean:Mean") or else its type; the first five are the networks' own layers.
GROUPS = (("convolutions", ("Conv2D", "conv2d")),
          ("dense layers", ("MatMul", "dense")),
          ("batch normalisation", ("batch_normalization",)),
          ("dropout", ("dropout",)),
          ("activations", ("leaky_re_lu", "LeakyRelu", "Tanh", "tanh")))
REST = "the rest (losses, optimizers, noise, metrics)"


def group_of(name: str) -> str:
    for group, keys in GROUPS:
        if any(key in name for key in keys):
            return group
    return REST


def profile(variant, steps: int) -> tuple[float, collections.Counter]:
    """(wall ms per step, Counter of kernel name -> ms per step) over ``steps`` steps."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    logdir = tempfile.mkdtemp(prefix="ganflow-profile-")
    tf.profiler.experimental.start(logdir)
    variant.run(steps)
    tf.profiler.experimental.stop()
    (path,) = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
    space = xplane_pb2.XSpace()
    with open(path, "rb") as handle:
        space.ParseFromString(handle.read())
    kernels, wall = collections.Counter(), 0.0
    for plane in space.planes:
        names = plane.event_metadata
        for line in plane.lines:
            for event in line.events:
                name = names[event.metadata_id].name
                ms = event.duration_ps / 1e9
                if line.name == "python" and name == "multi_step_on_iterator":
                    wall += ms
                elif (line.name.startswith("tf_Compute") and ":" in name
                      and "::" not in name):  # a kernel, "op name:op type"
                    kernels[name] += ms
    return wall / steps, collections.Counter({k: v / steps for k, v in kernels.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--top", type=int, default=8, help="op types of 'the rest' listed")
    args = parser.parse_args()

    from bench_speed import KerasVariant, pipeline

    data = pipeline(args.batch_size)
    results = {}
    for kind in ("ganflow", "keras-style"):
        variant = KerasVariant(kind, args.precision, False, data)
        variant.run(3)  # tracing, oneDNN's first calls
        results[kind] = profile(variant, args.steps)

    print(f"\n{args.precision}, XLA off, batch {args.batch_size}, {args.steps} traced steps; "
          "kernel milliseconds per step (share of all kernel time):\n")
    print("| | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    totals = {kind: sum(k.values()) for kind, (_, k) in results.items()}
    for name in [g for g, _ in GROUPS] + [REST]:
        cells = []
        for kind, (_, kernels) in results.items():
            ms = sum(v for k, v in kernels.items() if group_of(k) == name)
            cells.append(f"{ms:.0f} ({ms / totals[kind]:.0%})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| all kernels | " + " | ".join(f"{totals[k]:.0f}" for k in results) + " |")
    print("| wall time per step | " + " | ".join(f"{w:.0f}" for w, _ in results.values()) + " |")
    for kind, (_, kernels) in results.items():
        rest = collections.Counter()
        for k, v in kernels.items():
            if group_of(k) == REST:
                rest[k.rsplit(":", 1)[1].removeprefix("_MklNative").removeprefix("_Mkl")] += v
        print(f"\n{kind}, the rest by op type (ms per step): "
              + ", ".join(f"{k} {v:.1f}" for k, v in rest.most_common(args.top)))


if __name__ == "__main__":
    main()
