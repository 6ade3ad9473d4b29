"""Evaluation speed: seconds to score N generated samples, end to end and by stage.

    python bench/bench_evaluate.py                       # 10,000 samples, classifier features
    python bench/bench_evaluate.py -n 2000 --repeats 5
    python bench/bench_evaluate.py --model-uri models:/dcgan-generator@champion

The generator is the dcgan recipe's (untrained, unless --model-uri names a logged one); the
data is the bundled digits; the features are the domain classifier's (loaded from the cache,
or with --cold trained and timed first). After one warm-up evaluation, each of --repeats
rounds times: generating the samples, then everything `ganflow evaluate` does with them (features,
FID, KID, precision/recall, class coverage), and each stage alone on the same features.
Reported: median seconds (min-max), and each stage's ratio to generating the samples,
measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=10_000, help="generated samples")
    parser.add_argument("--features", default="classifier")
    parser.add_argument("--model-uri", help="a logged generator (default: untrained dcgan)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    parser.add_argument("--cold", action="store_true",
                        help="start from an empty cache, so the classifier is trained (and timed)")
    args = parser.parse_args()
    if args.cold:
        import tempfile

        os.environ["GANFLOW_CACHE_DIR"] = tempfile.mkdtemp(prefix="ganflow-bench-cache-")

    import keras

    from ganflow import evaluation, metrics, models, noise
    from ganflow.plugins import load_plugins
    from ganflow.prepare import prepare
    from ganflow.resolve import configure, resolve

    plugins = load_plugins()
    config = configure(plugins, "dcgan", {"eval_every": 0})
    prepared = prepare(resolve(config, plugins))
    if args.model_uri:
        sampler = models.load_sampler(args.model_uri)
        latent_dim = sampler.latent_dim

        def generate(z):
            return sampler(z)
    else:
        latent_dim = config.latent_dim

        def generate(z):
            return evaluation.generate(prepared.gan.generator, z)

    started = time.perf_counter()
    evaluator = evaluation.build(plugins, prepared.source, config.dataset, args.features,
                                 real_examples=args.count, log=lambda line: None)
    first_use = time.perf_counter() - started
    z = noise.latent(args.count, latent_dim, 0, "eval")
    evaluator(generate(z[:1000]))  # warm-up: tracing, first calls

    def clock(function, *arguments):
        began = time.perf_counter()
        out = function(*arguments)
        return out, time.perf_counter() - began

    real = evaluator.real_features
    stages = {name: [] for name in ("generate", "evaluate", "total", "features", "fid", "kid",
                                    "precision/recall")}
    for _ in range(args.repeats):
        samples, seconds = clock(generate, z)
        stages["generate"].append(seconds)
        _, seconds = clock(evaluator, samples)
        stages["evaluate"].append(seconds)
        stages["total"].append(stages["generate"][-1] + seconds)
        (fake, _), seconds = clock(evaluation.extract, evaluator.extractor, samples)
        stages["features"].append(seconds)
        stages["fid"].append(clock(metrics.fid, real, fake)[1])
        stages["kid"].append(clock(metrics.kid, real, fake)[1])
        stages["precision/recall"].append(clock(metrics.precision_recall, real, fake)[1])

    print(f"{args.count} samples against {len(real)} real digits, {args.features} features "
          f"({real.shape[1]}-d), keras {keras.__version__}, {os.cpu_count()} CPUs; "
          f"{args.repeats} rounds after a warm-up")
    print(f"building the evaluator (classifier trained or loaded from the cache, real "
          f"features): {first_use:.1f} s")
    baseline = statistics.median(stages["generate"])
    print(f"{'stage':<18}{'seconds':>9}{'min-max':>16}{'ratio':>8}")
    for name, values in stages.items():
        median = statistics.median(values)
        print(f"{name:<18}{median:>9.2f}{min(values):>8.2f}-{max(values):<7.2f}"
              f"{median / baseline:>8.2f}")


if __name__ == "__main__":
    main()
