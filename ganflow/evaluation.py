"""Sample quality against a dataset: features from a plugin, metrics from ``ganflow.metrics``.

An ``Evaluator`` is built once per dataset and feature extractor: it extracts the real
examples' features (and keeps the data's class histogram) up front, so every later call only
extracts the generated samples' features. ``ganflow evaluate`` builds one for a logged
generator; ``ganflow run --eval-every N`` builds one before training starts and calls it
every N epochs.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ganflow import metrics, noise
from ganflow.errors import UsageError
from ganflow.types import DatasetOptions, FeatureOptions

DEFAULT_SAMPLES = 10_000
# Precision and recall compare every sample with every real example (k nearest neighbours):
# beyond this many of each, both use the first this many (the rest still count for the others).
PR_MAX = 10_000
# Examples per forward pass when generating or extracting features: CHUNK at 32x32x3 and
# below, fewer for larger examples, whose activations grow with their pixels (500 at 64 px
# held 0.7 GB more than 125 beside a training run).
CHUNK = 500
CHUNK_VALUES = CHUNK * 32 * 32 * 3
# The order metrics are shown and logged in.
METRIC_NAMES = ("fid", "kid", "kid_std", "precision", "recall", "class_coverage", "class_kl",
                "class_accuracy", "modes_captured", "kl_to_uniform")
LOWER_IS_BETTER = {"fid", "kid", "class_kl", "kl_to_uniform"}


def chunk_for(shape) -> int:
    """Examples of ``shape`` per forward pass."""
    return max(1, min(CHUNK, CHUNK_VALUES // math.prod(shape)))


def cache_dir() -> Path:
    """Where extractors keep what they learn: GANFLOW_CACHE_DIR, else ~/.cache/ganflow."""
    if os.environ.get("GANFLOW_CACHE_DIR"):
        return Path(os.environ["GANFLOW_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ganflow"


def default_features(source) -> str:
    """The domain classifier for labelled images (and for images whose channels are each an
    example of a labelled source), Inception for other images, raw points else."""
    if not source.spec.is_image:
        return "raw"
    return "classifier" if source.labelled or stacked_modes(source) else "inception"


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Evaluator:
    """Scores generated samples against ``real`` examples' features; build with ``build``."""

    features: str
    extractor: Any
    shape: tuple[int, ...]
    real_features: np.ndarray
    data_histogram: np.ndarray | None  # the data's class shares, when it has labels
    seed: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    provider: str = ""  # the plugin that registered the feature extractor
    modes: int = 0  # Stacked-MNIST-like data: its number of modes, to log modes_captured
    # and kl_to_uniform over (the channel source's classes to the power of the channels)

    def __post_init__(self):
        self.real_stats = metrics.statistics(self.real_features)

    def __call__(self, samples: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
        """The metrics of ``samples`` (n, *shape), by name (``METRIC_NAMES``). ``labels``: the
        classes a conditional generator was asked for; ``class_accuracy`` is then the share of
        samples the extractor classifies as asked."""
        samples = np.asarray(samples, np.float32)
        self._check(samples.shape[1:])
        return self.score(*extract(self.extractor, samples), labels)

    def sampled(self, sample, z: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
        """The metrics of ``sample(z, labels)``'s samples for the noise ``z`` (and ``labels``),
        made and featurized a chunk at a time (``chunk_for``): only the features of all of
        them are held, never all the samples (10,000 at 256 px would be 7.9 GB)."""
        features, classes = [], []
        step = chunk_for(self.shape)
        for start in range(0, len(z), step):
            part = None if labels is None else labels[start : start + step]
            samples = np.asarray(sample(z[start : start + step], part), np.float32)
            self._check(samples.shape[1:])
            f, c = extract(self.extractor, samples)
            features.append(f)
            classes.append(c)
        return self.score(np.concatenate(features),
                          None if classes[0] is None else np.concatenate(classes), labels)

    def _check(self, shape: tuple[int, ...]) -> None:
        if shape != self.shape:
            raise UsageError(f"the samples have shape {shape}, the data {self.shape}: "
                             "evaluate against the dataset the model was trained on")

    def score(self, fake: np.ndarray, classes: np.ndarray | None = None,
              labels: np.ndarray | None = None) -> dict[str, float]:
        """The metrics of samples from their features ``fake`` (and ``classes``, the
        extractor's, when it classifies)."""
        fid = metrics.frechet_distance(*self.real_stats, *metrics.statistics(fake))
        kid, kid_std = metrics.kid(self.real_features, fake, seed=self.seed)
        precision, recall = metrics.precision_recall(self.real_features[:PR_MAX], fake[:PR_MAX])
        out = {"fid": fid, "kid": kid, "kid_std": kid_std, "precision": precision,
               "recall": recall}
        if classes is not None and self.data_histogram is not None:
            histogram = metrics.class_histogram(classes, len(self.data_histogram))
            out["class_coverage"] = metrics.class_coverage(histogram, self.data_histogram)
            out["class_kl"] = metrics.class_kl(histogram, self.data_histogram)
        if classes is not None and labels is not None:
            out["class_accuracy"] = float(np.mean(classes == np.asarray(labels)))
        if classes is not None and self.modes:
            out.update(mode_metrics(classes, self.modes))
        return out

    def labels(self, count: int, seed: int) -> np.ndarray:
        """Labels to ask a conditional generator for: drawn with the data's class shares."""
        if self.data_histogram is None:
            raise UsageError("a conditional generator is evaluated on labelled data only")
        return noise.labels(count, self.data_histogram, seed)

    @property
    def params(self) -> dict[str, Any]:
        """What the numbers were measured with: the features, the reference, the extractor."""
        return {"eval_features": self.features, "eval_real_examples": len(self.real_features),
                "eval_feature_dim": self.real_features.shape[1],
                **{f"eval_{k}": v for k, v in self.info.items()}}


def build(plugins, source, dataset: str, features: str | None = None,
          weights: str | None = None, real_examples: int = DEFAULT_SAMPLES, seed: int = 0,
          log=log_to_stderr) -> Evaluator:
    """An Evaluator for ``source`` (named ``dataset``), with ``real_examples`` real examples.

    ``features`` names a registered extractor (default: ``default_features(source)``).
    """
    name = features or default_features(source)
    entry = plugins.features.get(name)
    options = FeatureOptions(source=source, dataset=dataset, weights=weights,
                             cache_dir=cache_dir(), log=log)
    extractor = entry.call("to start", entry.obj, options)
    info = dict(getattr(extractor, "info", {}) or {})
    real_features, labels, key = reference_features(source, extractor, name, info,
                                                    real_examples, seed, log)
    histogram = None
    if labels is not None and source.spec.num_classes:
        histogram = metrics.class_histogram(labels, source.spec.num_classes)
    if key:
        info["reference"] = key
    modes = stacked_modes(source)
    if modes:  # the floor: real data's own numbers, measured the same way
        real = source.dataset().take(real_examples)
        if source.labelled:
            real = real.map(lambda x, _: x)
        real_classes = np.concatenate([
            extract(extractor, x)[1]
            for x in real.batch(chunk_for(source.spec.shape)).as_numpy_iterator()])
        info.update({f"real_{k}": round(v, 4) for k, v in
                     mode_metrics(real_classes, modes).items()})
    return Evaluator(name, extractor, tuple(source.spec.shape), real_features, histogram,
                     seed=seed, info=info, provider=entry.plugin, modes=modes)


def stacked_modes(source) -> int:
    """The modes of data whose channels are each an example of a labelled ``channel_source``
    (Stacked MNIST: 10 classes, 3 channels, 1,000 modes), whatever its own labels; else 0."""
    base = source.channel_source
    if base is None or not base.spec.num_classes:
        return 0
    return base.spec.num_classes ** source.spec.shape[-1]


def mode_metrics(classes: np.ndarray, num_classes: int) -> dict[str, float]:
    """``modes_captured``, the classes with at least one sample, and ``kl_to_uniform``,
    KL(class histogram || uniform) in nats, as the Stacked MNIST papers count them."""
    histogram = metrics.class_histogram(classes, num_classes)
    return {"modes_captured": float(np.count_nonzero(histogram)),
            "kl_to_uniform": metrics.class_kl(histogram, np.full(num_classes, 1 / num_classes))}


def reference_features(source, extractor, name: str, info: dict, count: int, seed: int,
                       log=log_to_stderr) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """The features (and labels) of ``count`` real examples drawn with ``seed``, and the key
    they are kept under. A prepared dataset's (``source.info["digest"]``) are drawn from the
    whole of it, computed once per (dataset, extractor and its weights, count, seed) and kept
    in the cache folder, so every run and ``ganflow evaluate`` compares with the same
    reference; the key, logged with a run (``eval_reference``), says which. Other sources'
    are computed each time (key None). Either way the examples stream through the extractor
    a chunk at a time: only their features are held."""
    digest = source.info.get("digest")
    if digest is None:
        features, labels = _reference_features(source, extractor, count, seed)
        return features, labels, None
    import hashlib
    import json

    key = hashlib.sha256(json.dumps([digest, name, info, count, seed], sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    path = cache_dir() / "references" / f"{key}.npz"
    if path.exists():
        kept = np.load(path)
        return kept["features"], (kept["labels"] if "labels" in kept else None), key
    features, labels = _reference_features(source, extractor, count, seed, span=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.stem}.{os.getpid()}.npz")
    np.savez(staging, features=features, **({} if labels is None else {"labels": labels}))
    os.replace(staging, path)
    log(f"Reference features of {len(features):,} examples of the whole dataset kept as {key} "
        f"in {path.parent}")
    return features, labels, key


def _reference_features(source, extractor, count: int, seed: int,
                        span: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The extractor's features of ``reference(source, count, seed, span)``'s examples, in
    its order, extracted as they stream past (a chunk at a time, ``chunk_for``)."""
    slots, stream = _drawn(source, count, seed, span)
    return _placed(len(slots), _regrouped(stream, chunk_for(source.spec.shape)),
                   lambda xs: extract(extractor, xs)[0])


# Real examples are drawn from at most this many times as many examples as are needed.
REFERENCE_SPAN = 5


def reference(source, count: int, seed: int,
              span: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Up to ``count`` real examples (and labels, when labelled), drawn with ``seed``.

    A reservoir sample of the first ``span`` examples (default ``REFERENCE_SPAN * count``; -1:
    all of them), holding ``count`` examples at most,
    drawn with NumPy so the same seed gives the same examples whatever TensorFlow's global
    seed (a run sets it, a later ``ganflow evaluate`` does not); drawn because some sources
    are ordered by class. Only the kept examples are held, each once.
    """
    slots, stream = _drawn(source, count, seed, span)
    return _placed(len(slots), stream, lambda xs: np.asarray(xs, np.float32))


def _placed(count: int, parts, transform) -> tuple[np.ndarray, np.ndarray | None]:
    """``transform``'s rows of each part's examples, and the part's labels (or None), each put
    at its slot of ``count``: the (slots, examples, labels) parts of ``_drawn``."""
    rows = labels = None
    for where, xs, ys in parts:
        got = transform(xs)
        if rows is None:
            rows = np.empty((count, *got.shape[1:]), got.dtype)
            labels = None if ys is None else np.empty(count, ys.dtype)
        rows[where] = got
        if ys is not None:
            labels[where] = ys
    return rows, labels


def reservoir_slots(n: int, count: int, seed: int) -> np.ndarray:
    """Which of ``n`` examples seen in turn a reservoir sample of ``count`` keeps, by slot:
    the draws of Algorithm R, made without looking at the examples, so that only the kept
    ones need be held while the data streams past."""
    rng = noise.rng(seed, "reference")
    slots = np.arange(min(n, count))
    for seen in range(count, n):
        slot = rng.integers(0, seen + 1)
        if slot < count:
            slots[slot] = seen
    return slots


def _drawn(source, count: int, seed: int, span: int | None):
    """(the reservoir's slots, a stream of (slots, examples, labels or None) in the data's
    order): the examples ``reference`` draws, a batch of the data at a time."""
    size = source.spec.size
    n = size if span == -1 else min(span or REFERENCE_SPAN * count, size)
    if n < 1:
        raise UsageError("the dataset has no examples to compare with")
    slots = reservoir_slots(n, count, seed)
    slot_of = np.full(n, -1, np.int64)
    slot_of[slots] = np.arange(len(slots))

    def stream():
        seen = 0
        batched = source.dataset().take(n).batch(chunk_for(source.spec.shape))
        for batch in batched.as_numpy_iterator():
            xs, ys = batch if source.labelled else (batch, None)
            where = slot_of[seen : seen + len(xs)]
            keep = where >= 0
            seen += len(xs)
            if keep.any():  # fancy indexing copies: no batch is kept alive by a view
                yield where[keep], xs[keep], (None if ys is None else ys[keep])
        if seen < n:
            raise UsageError(f"the dataset gave {seen:,} examples where it says it has "
                             f"{size:,}: prepare it again")

    return slots, stream()


def _regrouped(stream, size: int):
    """``_drawn``'s chunks joined into groups of at least ``size`` examples (the last may
    be smaller): an extractor runs best on full batches."""
    parts: list = []
    held = 0
    for part in stream:
        parts.append(part)
        held += len(part[0])
        if held >= size:
            yield _joined(parts)
            parts, held = [], 0
    if parts:
        yield _joined(parts)


def _joined(parts):
    ys = [y for _, _, y in parts]
    return (np.concatenate([w for w, _, _ in parts]), np.concatenate([x for _, x, _ in parts]),
            None if ys[0] is None else np.concatenate(ys))


def extract(extractor, examples: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The extractor's (features, classes) for examples, a chunk at a time."""
    features, classes = [], []
    step = chunk_for(examples.shape[1:])
    for start in range(0, len(examples), step):
        f, c = extractor.extract(examples[start : start + step])
        features.append(np.asarray(f, np.float64).reshape(len(f), -1))
        classes.append(None if c is None else np.asarray(c))
    got = np.concatenate(features)
    return got, (None if any(c is None for c in classes) else np.concatenate(classes))


def generate(generator, z: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """A Keras generator's samples for noise ``z`` (and ``labels``, for a conditional one), a
    chunk at a time, in inference mode."""
    import keras

    def inputs(start):
        chunk = z[start : start + CHUNK]
        return chunk if labels is None else [chunk, labels[start : start + CHUNK]]

    return np.concatenate([
        keras.ops.convert_to_numpy(generator(inputs(start), training=False))
        for start in range(0, len(z), CHUNK)
    ])


def format_table(values: dict[str, float]) -> str:
    """Metrics one per line, in ``METRIC_NAMES`` order, each saying which way is better."""
    lines = []
    for name in METRIC_NAMES:
        if name in values:
            better = "lower is better" if name in LOWER_IS_BETTER else "higher is better"
            better = "" if name == "kid_std" else f"  ({better})"
            lines.append(f"  {name:<15}{values[name]:>12.4f}{better}")
    return "\n".join(lines)


@dataclass
class Report:
    """What ``ganflow evaluate`` measured, and with what."""

    model_uri: str
    dataset: str
    features: str
    samples: int
    real_examples: int
    feature_dim: int
    seed: int
    metrics: dict[str, float]
    info: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"model_uri": self.model_uri, "dataset": self.dataset, "features": self.features,
                "samples": self.samples, "real_examples": self.real_examples, "seed": self.seed,
                "metrics": self.metrics, "info": self.info, "seconds": round(self.seconds, 2)}


def evaluate_model(plugins, model_uri: str, dataset: str | None = None,
                   count: int = DEFAULT_SAMPLES, features: str | None = None,
                   weights: str | None = None, seed: int = 0, data_dir: str | None = None,
                   image_size: int | None = None) -> Report:
    """Score the logged generator at ``model_uri`` against ``dataset`` (default: the one it
    was trained on, with that run's image size and data folder)."""
    import time

    from ganflow import models

    started = time.perf_counter()
    sampler = models.load_sampler(model_uri)
    params, tags = models.training_run(model_uri)
    dataset = dataset or params.get("dataset")
    if not dataset:
        raise UsageError(f"{model_uri} does not say what it was trained on: pass --dataset NAME")
    if params.get("dataset") == dataset:  # its image size and data folder too
        image_size = image_size or int(params.get("image_size") or 0) or None
        data_dir = data_dir or params.get("data_dir") or None
        name = dataset.partition(":")[0]
        if name not in plugins.datasets:
            provider = tags.get("ganflow.plugin.dataset", "a plugin")
            modules = params.get("plugin_modules")
            how = f"pass --plugin-module {modules.replace(';', ' --plugin-module ')}" \
                if modules else "install the package that provides it"
            raise UsageError(f"{model_uri} was trained on dataset {name!r} from plugin "
                             f"{provider}, which is not loaded here: {how}")
    entry, argument = plugins.dataset(dataset)
    if features:
        plugins.features.get(features)
    source = entry.call("to load", entry.obj, DatasetOptions(argument, data_dir, image_size))
    made = sampler.shape
    if made != tuple(source.spec.shape):
        raise UsageError(f"{model_uri} makes samples of shape {made} but {dataset} has "
                         f"examples of shape {tuple(source.spec.shape)}: pass the dataset "
                         "(and --image-size) it was trained on")
    evaluator = build(plugins, source, dataset, features, weights, count, seed)
    labels = evaluator.labels(count, seed) if sampler.num_classes else None
    values = evaluator.sampled(sampler, noise.latent(count, sampler.latent_dim, seed, "eval"),
                               labels)
    return Report(model_uri, dataset, evaluator.features, count, len(evaluator.real_features),
                  evaluator.real_features.shape[1], seed, values, evaluator.info,
                  time.perf_counter() - started)
