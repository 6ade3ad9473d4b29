"""Training-step speed: ms per step (k D updates + 1 G update) for a recipe, per precision
and XLA setting.

    python bench/bench_step.py                      # the dcgan recipe on digits
    python bench/bench_step.py --batch-size 64 --d-steps 2 --repeats 7
    python bench/bench_step.py --precision float32 mixed_bfloat16 --jit off
    python bench/bench_step.py --precision auto --jit off --augment none ada diffaugment
    python bench/bench_step.py --plugin stylegan2 --jit off --flops
    python bench/bench_step.py --precision auto --jit off --dataset prepared:p64 prepared:p128

With ``--flops``, each variant's step is also counted: TensorFlow's own count of the floating
point operations of the traced ``GAN.train_step`` (``tf.compat.v1.profiler``'s
``float_operation``: the ops with a registered cost, convolutions, matmuls and their
gradients; not the branches of a lazy regularizer's ``tf.cond``, which run every N-th step),
and the achieved GFLOP per CPU-second beside this machine's practical peak, a 4096^3 matmul
in the variant's compute dtype, timed in the same run.

Each variant is built from the same resolved settings (the real plugins, pipeline and
GAN.train_step), warmed up (tracing and XLA compilation excluded), then timed over --repeats
windows of --steps steps. Variants alternate window by window, so drift of a shared machine
hits them alike. Reported: median ms/step of wall time (min-max) and of CPU time
(``time.process_time``, all threads), real examples consumed per wall second, and the ratios
of the first variant's time to each one's (above 1: faster), measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# --augment NAME -> the run's augment setting.
AUGMENTS = {"none": None, "ada": ("ada",), "ada-p1": ("ada:p=1.0",),
            "diffaugment": ("color", "translation", "cutout")}


def main():
    from ganflow.config import CHOICES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plugin", default="dcgan", help="recipe")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--d-steps", type=int)
    parser.add_argument("--arch", help="the recipe's architecture replaced (resnet:width=8)")
    parser.add_argument("--steps", type=int, default=50, help="steps per timed window")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=5, help="timed windows per variant")
    parser.add_argument("--precision", nargs="+", default=["float32", "mixed_bfloat16"],
                        choices=CHOICES["precision"],
                        help="dtype policies to time (auto: what it picks here)")
    parser.add_argument("--jit", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--augment", nargs="+", default=["none"], choices=list(AUGMENTS),
                        help="augmentations of D's inputs to time (none: the recipe's)")
    parser.add_argument("--dataset", nargs="+", default=[None],
                        help="datasets to time the recipe on (default: the recipe's)")
    parser.add_argument("--flops", action="store_true",
                        help="also count each step's FLOPs and compare with a matmul's peak")
    args = parser.parse_args()

    import keras

    from ganflow.data import training_pipeline
    from ganflow.devices import resolve_precision
    from ganflow.plugins import load_plugins
    from ganflow.prepare import prepare
    from ganflow.resolve import configure, resolve

    plugins = load_plugins()
    flags = {"batch_size": args.batch_size, "d_steps": args.d_steps, "arch": args.arch,
             "eval_every": 0}
    variants = {}
    # Each policy once: `auto` is one of the others on any machine.
    for precision in dict.fromkeys(resolve_precision(p) for p in args.precision):
        for jit in args.jit:
            for augment in args.augment:
                for dataset in args.dataset:
                    config = configure(plugins, args.plugin,
                                       {**flags, "jit": jit, "precision": precision,
                                        "augment": AUGMENTS[augment], "dataset": dataset})
                    prepared = prepare(resolve(config, plugins))
                    pipeline = training_pipeline(prepared.source, prepared.per_step, config.seed)
                    prepared.gan.fit(pipeline, epochs=1, steps_per_epoch=args.warmup, verbose=0)
                    name = ", ".join([f"{precision}, jit {jit}",
                                      *([augment] if augment != "none" else []),
                                      *([dataset] if dataset else [])])
                    variants[name] = (prepared.gan, pipeline, prepared)

    times = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (gan, pipeline, _) in variants.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            gan.fit(pipeline, epochs=1, steps_per_epoch=args.steps, verbose=0)
            times[name].append((time.perf_counter() - started) / args.steps * 1000)
            cpu[name].append((time.process_time() - started_cpu) / args.steps * 1000)

    prepared = next(iter(variants.values()))[2]
    config = prepared.config
    print(f"recipe {args.plugin}: batch {config.batch_size} x d-steps {config.d_steps}, "
          f"keras {keras.__version__}, {os.cpu_count()} CPUs; {args.repeats} windows of "
          f"{args.steps} steps after {args.warmup} warm-up steps")
    first = next(iter(variants))
    print("| variant | ms/step (wall) | examples/s | speed-up | CPU ms/step | speed-up |")
    print("|---|---|---|---|---|---|")
    for name, values in times.items():
        median, median_cpu = statistics.median(values), statistics.median(cpu[name])
        examples = prepared.per_step / (median / 1000)  # real ones consumed
        print(f"| {name} | {median:.1f} ({min(values):.1f}-{max(values):.1f}) | {examples:.0f} "
              f"| {statistics.median(times[first]) / median:.2f} | {median_cpu:.1f} "
              f"({min(cpu[name]):.1f}-{max(cpu[name]):.1f}) "
              f"| {statistics.median(cpu[first]) / median_cpu:.2f} |")
    if args.flops:
        print()
        print("| variant | GFLOP/step | GFLOP per CPU-s | matmul peak, GFLOP per CPU-s | "
              "share of peak |")
        print("|---|---|---|---|---|")
        peaks = {}
        for name, (gan, pipeline, prepared) in variants.items():
            dtype = prepared.gan.generator.compute_dtype
            if dtype not in peaks:
                peaks[dtype] = matmul_peak(dtype)
            flops = step_flops(gan, pipeline) / 1e9
            achieved = flops / (statistics.median(cpu[name]) / 1000)
            print(f"| {name} | {flops:.2f} | {achieved:.1f} | {peaks[dtype]:.1f} "
                  f"| {achieved / peaks[dtype]:.2f} |")


def step_flops(gan, pipeline) -> float:
    """TensorFlow's count of the floating point operations of one traced training step."""
    import tensorflow as tf

    batch = next(iter(pipeline))
    spec = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), batch)
    graph = tf.function(gan.train_step).get_concrete_function(spec).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return float(tf.compat.v1.profiler.profile(graph, options=options).total_float_ops)


def matmul_peak(dtype: str, n: int = 4096, repeats: int = 5) -> float:
    """GFLOP per CPU-second of an n^3 matmul in ``dtype`` (the best of ``repeats``)."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal((n, n), seed=1), dtype)
    b = tf.cast(tf.random.normal((n, n), seed=2), dtype)
    product = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b), "float32")))
    product()
    best = 0.0
    for _ in range(repeats):
        started = time.process_time()
        product().numpy()
        best = max(best, 2 * n ** 3 / 1e9 / (time.process_time() - started))
    return best


if __name__ == "__main__":
    main()
