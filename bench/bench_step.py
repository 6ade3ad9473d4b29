"""Training-step speed: ms per step (k D updates + 1 G update) for a recipe, XLA off vs on.

    python bench/bench_step.py                      # the dcgan recipe on digits
    python bench/bench_step.py --batch-size 64 --d-steps 2 --repeats 7

Each variant is built from the same resolved settings (the real plugins, pipeline and
GAN.train_step), warmed up (tracing and XLA compilation excluded), then timed over --repeats
windows of --steps steps. Variants alternate window by window, so drift of a shared machine
hits them alike. Reported: median ms/step (min-max), real examples consumed per second, and the ratio to the first
variant (XLA off) measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plugin", default="dcgan", help="recipe")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--d-steps", type=int)
    parser.add_argument("--steps", type=int, default=50, help="steps per timed window")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=5, help="timed windows per variant")
    args = parser.parse_args()

    import keras

    from ganflow.data import training_pipeline
    from ganflow.plugins import load_plugins
    from ganflow.runner import prepare, resolve_config

    plugins = load_plugins()
    flags = {"batch_size": args.batch_size, "d_steps": args.d_steps, "eval_every": 0}
    variants = {}
    for jit in ("off", "on"):
        config = resolve_config(plugins, args.plugin, None, {**flags, "jit": jit})
        prepared = prepare(config, plugins)
        pipeline = training_pipeline(prepared.source, prepared.per_step, config.seed)
        prepared.gan.fit(pipeline, epochs=1, steps_per_epoch=args.warmup, verbose=0,
                         shuffle=False)
        variants[f"jit={jit}"] = (prepared.gan, pipeline, prepared)

    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (gan, pipeline, _) in variants.items():
            started = time.perf_counter()
            gan.fit(pipeline, epochs=1, steps_per_epoch=args.steps, verbose=0, shuffle=False)
            times[name].append((time.perf_counter() - started) / args.steps * 1000)

    prepared = next(iter(variants.values()))[2]
    config = prepared.config
    print(f"recipe {args.plugin}: batch {config.batch_size} x d-steps {config.d_steps}, "
          f"keras {keras.__version__}, {os.cpu_count()} CPUs; {args.repeats} windows of "
          f"{args.steps} steps after {args.warmup} warm-up steps")
    baseline = statistics.median(next(iter(times.values())))
    print(f"{'variant':<10}{'ms/step':>10}{'min-max':>16}{'examples/s':>12}{'ratio':>8}")
    for name, values in times.items():
        median = statistics.median(values)
        examples = prepared.per_step / (median / 1000)  # real ones consumed
        print(f"{name:<10}{median:>10.1f}{min(values):>8.1f}-{max(values):<7.1f}"
              f"{examples:>12.0f}{median / baseline:>8.2f}")


if __name__ == "__main__":
    main()
