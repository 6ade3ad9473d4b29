"""Which digits a logged generator draws: the share of each class among its samples, read by the
domain classifier of the dataset it was trained on, per channel for Stacked MNIST (where each
channel is a digit), with KL(shares || uniform) and the share of samples the classifier is
sure of (``--by-class``: of each class's samples, in a second row). It says where a KL to
uniform comes from: one class too rare or too common, in every channel alike, is G's class
balance, not a dependence between channels; and whether the rare classes are the ones G draws
worst.

    python bench/class_shares.py models:/m-... [models:/m-... ...] --tracking-uri sqlite:///runs.db

Samples: 10,000 (26,000 for three-channel data, as the Stacked MNIST papers score), from the
evaluation's noise stream (``--seed``), in inference mode.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SURE = 0.9  # a sample the classifier gives at least this probability
CLASSES = 10  # digits


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="models:/ or runs:/ URIs of generators")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--samples", type=int, help="default: 10,000, or 26,000 for 3 channels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--by-class", action="store_true",
                        help="also the share of each class's samples the classifier is sure of")
    args = parser.parse_args()

    import keras
    import mlflow
    import numpy as np

    from ganflow import DatasetOptions, FeatureOptions, evaluation, metrics, models, noise
    from ganflow.plugins import load_plugins

    if args.tracking_uri:
        mlflow.set_tracking_uri(args.tracking_uri)
    plugins = load_plugins()
    print("| generator | channel | KL(shares, uniform) | sure | " +
          " | ".join(map(str, range(CLASSES))) + " |")
    print("|---" * (CLASSES + 4) + "|")
    for uri in args.models:
        sampler = models.load_sampler(uri)
        params, _ = models.training_run(uri)
        entry, argument = plugins.dataset(params["dataset"])
        source = entry.call("to load", entry.obj, DatasetOptions(argument, None, None))
        entry = plugins.features.get("classifier")
        extractor = entry.call("to start", entry.obj, FeatureOptions(
            source=source, dataset=params["dataset"], cache_dir=evaluation.cache_dir()))
        classifier = getattr(extractor, "base", extractor).model  # a channel's, if stacked
        count = args.samples or (26_000 if sampler.shape[-1] == 3 else 10_000)
        channels = sampler.shape[-1] if source.channel_source else 1
        z = noise.latent(count, sampler.latent_dim, args.seed, "eval")
        step = evaluation.chunk_for(sampler.shape)
        classes, sure = [[] for _ in range(channels)], [[] for _ in range(channels)]
        for start in range(0, count, step):  # a chunk of samples at a time, as evaluations do
            x = np.asarray(sampler(z[start : start + step]), np.float32)
            for channel in range(channels):
                part = x[..., channel : channel + 1] if source.channel_source else x
                _, logits = classifier.predict(part, batch_size=500, verbose=0)
                p = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
                classes[channel].append(p.argmax(1))
                sure[channel].append(p.max(1) >= SURE)
        for channel in range(channels):
            read, certain = np.concatenate(classes[channel]), np.concatenate(sure[channel])
            shares = metrics.class_histogram(read, CLASSES)
            kl = metrics.class_kl(shares, np.full(CLASSES, 1 / CLASSES))
            print(f"| {uri} | {channel} | {kl:.4f} | {np.mean(certain):.2f}"
                  " | " + " | ".join(f"{100 * s:.1f}" for s in shares) + " |", flush=True)
            if args.by_class:  # how sure the classifier is of the samples it reads as each class
                print(f"| {uri} | {channel}, sure by class | | | " + " | ".join(
                    f"{100 * np.mean(certain[read == k]):.0f}" if (read == k).any() else "-"
                    for k in range(CLASSES)) + " |", flush=True)

if __name__ == "__main__":
    main()
