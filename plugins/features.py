"""Feature extractors for sample-quality metrics: ``classifier``, ``inception`` and ``raw``.

- ``classifier``: a small CNN trained on the labelled dataset itself, cached per dataset; its
  penultimate layer gives the features and its prediction the class. Offline, seconds to train.
- ``inception``: keras.applications InceptionV3's 2048-d average-pooled features of images
  resized to 299x299, the features FID was defined with. ImageNet weights from Keras's own
  download (cached in ~/.keras/models) or ``--weights PATH``.
- ``raw``: the examples themselves, flattened (toy points).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

import ganflow

# Bump when the classifier's architecture or training changes: old caches are then ignored.
CLASSIFIER_VERSION = 1
CLASSIFIER_SEED = 0
CLASSIFIER_FEATURES = 128
TEST_SHARE = 0.2
MAX_TEST = 10_000
# Roughly this many training updates, whatever the dataset's size (at least 3 epochs).
CLASSIFIER_UPDATES = 1_000
CLASSIFIER_BATCH = 64
# What it learns from: every labelled example up to this many, or up to this many bytes of
# them as float32 (a prepared dataset of 100,000 images at 64 px is 4.9 GB), a seeded sample
# drawn from the whole dataset beyond; 1,000 updates of 64 see 64,000 examples anyway.
CLASSIFIER_EXAMPLES = 20_000
CLASSIFIER_MEMORY = 512 * 2**20

INCEPTION_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
INCEPTION_HOST = "storage.googleapis.com"
INCEPTION_SIZE = 299


class Classifier:
    """The trained domain classifier: (penultimate features, predicted class) per example."""

    def __init__(self, model, info):
        self.model = model
        self.info = info

    def extract(self, examples):
        features, logits = self.model(examples, training=False)
        return np.asarray(features), np.asarray(logits).argmax(axis=1)


def _classifier_model(shape, num_classes):
    import keras
    from keras import layers

    inputs = keras.Input(shape)
    # Small shifts, filled with the background (-1), so a digit off-centre is still a digit.
    x = layers.RandomTranslation(0.08, 0.08, fill_mode="constant", fill_value=-1.0,
                                 seed=CLASSIFIER_SEED)(inputs)
    side, width = shape[0], 32
    while True:
        x = layers.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        side //= 2
        if side <= 8:
            break
        width = min(width * 2, 128)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.3, seed=CLASSIFIER_SEED)(x)
    features = layers.Dense(CLASSIFIER_FEATURES, activation="relu", name="features")(x)
    logits = layers.Dense(num_classes, name="logits")(
        layers.Dropout(0.3, seed=CLASSIFIER_SEED)(features))
    return keras.Model(inputs, [features, logits], name="domain_classifier")


def _load_labelled(source):
    """The labelled examples the classifier learns from: all of them when they are few enough
    (``CLASSIFIER_EXAMPLES``, ``CLASSIFIER_MEMORY``), in the dataset's order; else a sample of
    that many drawn with a fixed seed from the whole dataset, read as a stream."""
    from ganflow.evaluation import reference

    cap = min(CLASSIFIER_EXAMPLES, CLASSIFIER_MEMORY // (4 * math.prod(source.spec.shape)))
    x, y = reference(source, max(cap, 1), CLASSIFIER_SEED, span=-1)
    return x, y.astype(np.int64)


def _cache_key(options, labelled) -> str:
    """The dataset's name, shape, size and what it holds: a changed dataset retrains. What it
    holds is a prepared dataset's digest (its manifest's), else a hash of the examples it
    learns from, ``labelled`` (x, y): a cached classifier of a prepared dataset is found
    without reading the data."""
    digest = hashlib.sha256()
    spec = options.source.spec
    digest.update(json.dumps([CLASSIFIER_VERSION, options.dataset, list(spec.shape), spec.size,
                              spec.num_classes]).encode())
    if labelled is None:
        digest.update(options.source.info["digest"].encode())
    else:
        for part in labelled:
            digest.update(np.ascontiguousarray(part).tobytes())
    return digest.hexdigest()[:16]


def train_classifier(x, y, num_classes, log=print):
    """Train the domain classifier on (x, y); returns (model, info with test accuracy)."""
    import keras

    keras.utils.set_random_seed(CLASSIFIER_SEED)
    order = np.random.default_rng(CLASSIFIER_SEED).permutation(len(x))
    test_size = min(int(len(x) * TEST_SHARE), MAX_TEST)
    test, train = order[:test_size], order[test_size:]
    model = _classifier_model(x.shape[1:], num_classes)
    trainer = keras.Model(model.input, model.outputs[1])
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"])
    epochs = max(3, -(-CLASSIFIER_UPDATES * CLASSIFIER_BATCH // len(train)))  # ceil
    log(f"Training the domain classifier: {len(train)} examples, {epochs} epochs, "
        f"{len(test)} held out (cached for later evaluations)")
    trainer.fit(x[train], y[train], batch_size=CLASSIFIER_BATCH, epochs=epochs, verbose=0,
                shuffle=True)
    _, accuracy = trainer.evaluate(x[test], y[test], batch_size=500, verbose=0)
    info = {"classifier_test_accuracy": round(float(accuracy), 4),
            "classifier_train_examples": len(train), "classifier_test_examples": len(test),
            "classifier_epochs": epochs}
    return model, info


class PerChannel:
    """A channel source's classifier on each channel of a stacked example: the channels'
    features side by side, and their classes as the digits of one class (100a + 10b + c)."""

    def __init__(self, base: Classifier, channels: int, classes: int):
        self.base, self.channels, self.classes = base, channels, classes
        self.info = {**base.info, "classifier_channels": channels}

    def extract(self, examples):
        parts = [self.base.extract(examples[..., c : c + 1]) for c in range(self.channels)]
        label = np.zeros(len(examples), np.int64)
        for _, classes in parts:
            label = label * self.classes + classes
        return np.concatenate([features for features, _ in parts], axis=1), label


def classifier_features(options: ganflow.FeatureOptions) -> Classifier:
    source = options.source
    if source.channel_source is not None:  # Stacked MNIST: classify each channel
        base = classifier_features(dataclasses.replace(
            options, source=source.channel_source,
            dataset=source.info.get("channels_of", f"{options.dataset} (a channel)")))
        return PerChannel(base, source.spec.shape[-1], source.channel_source.spec.num_classes)
    if not source.labelled:
        raise ganflow.UsageError(
            f"--features classifier needs a labelled dataset and {options.dataset} has no "
            "labels: use --features inception"
        )
    if not source.spec.is_image:
        raise ganflow.UsageError(f"--features classifier needs images; {options.dataset} has "
                                 "points: use --features raw")
    labelled = None if "digest" in source.info else _load_labelled(source)
    folder = Path(options.cache_dir) / "classifiers" / _cache_key(options, labelled)
    if (folder / "info.json").is_file():
        return _cached_classifier(folder, options)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Runs started together (a sweep, or four runs at once on one store) would each train
    # the same classifier: the first trains it while the others wait, then load it.
    with _exclusive(folder.parent / f".{folder.name}.lock"):
        if (folder / "info.json").is_file():
            return _cached_classifier(folder, options)
        x, y = labelled or _load_labelled(source)
        model, info = train_classifier(x, y, source.spec.num_classes, options.log)
        options.log(f"Domain classifier for {options.dataset}: test accuracy "
                    f"{info['classifier_test_accuracy']:.4f}, cached in {folder}")
        # Written to a temporary folder and renamed: a run killed while writing never leaves
        # a half-written cache (and where file locks do not work, the second rename of two
        # runs training at once simply loses to the first).
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".staging-"))
        model.save(staging / "classifier.keras")
        (staging / "info.json").write_text(
            json.dumps({**info, "dataset": options.dataset}, indent=2))
        try:
            os.rename(staging, folder)
        except OSError:  # another process got there first
            shutil.rmtree(staging, ignore_errors=True)
    return Classifier(model, info)


def _cached_classifier(folder: Path, options) -> Classifier:
    import keras

    info = json.loads((folder / "info.json").read_text())
    info.pop("dataset", None)
    model = keras.models.load_model(folder / "classifier.keras")
    options.log(f"Domain classifier for {options.dataset} from the cache {folder} "
                f"(test accuracy {info['classifier_test_accuracy']:.4f})")
    return Classifier(model, info)


@contextlib.contextmanager
def _exclusive(path: Path):
    """An exclusive lock on ``path`` between processes (none where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent runs may both train; the rename settles it
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Inception:
    """InceptionV3's pool features (2048-d) of images resized to 299x299, in RGB."""

    def __init__(self, model, info):
        self.model = model
        self.info = info

    def extract(self, examples):
        import tensorflow as tf

        def features(part):  # 50 at a time: 500 images at 299x299 are 0.5 GB
            images = tf.image.resize(part, (INCEPTION_SIZE, INCEPTION_SIZE), method="bilinear")
            if images.shape[-1] == 1:
                images = tf.image.grayscale_to_rgb(images)
            # ganflow's images are in [-1, 1], which is what InceptionV3's preprocessing makes.
            return self.model(images, training=False).numpy()

        return np.concatenate([features(examples[i : i + 50])
                               for i in range(0, len(examples), 50)]), None


def keras_weights_path() -> Path:
    """Where Keras keeps downloaded application weights."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models" / INCEPTION_FILE


def inception_features(options: ganflow.FeatureOptions) -> Inception:
    if not options.source.spec.is_image:
        raise ganflow.UsageError(f"--features inception needs images; {options.dataset} has "
                                 "points: use --features raw")
    if options.weights:
        weights = Path(options.weights).expanduser()
        if not weights.is_file():
            raise ganflow.UsageError(f"--weights {options.weights}: no such file")
        source = str(weights)
    elif keras_weights_path().is_file() or ganflow.reachable(INCEPTION_HOST):
        source = "imagenet"
    else:
        raise ganflow.UsageError(
            f"InceptionV3's ImageNet weights are not downloaded ({keras_weights_path()}) and "
            f"{INCEPTION_HOST} cannot be reached: pass --weights PATH to a copy of "
            f"{INCEPTION_FILE}, or use --features classifier (offline, on labelled data)"
        )
    import keras

    try:
        model = keras.applications.InceptionV3(
            include_top=False, weights="imagenet" if source == "imagenet" else None,
            input_shape=(INCEPTION_SIZE, INCEPTION_SIZE, 3), pooling="avg")
        if source != "imagenet":
            model.load_weights(source)
    except (ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ganflow.UsageError(f"cannot load InceptionV3 weights from {source}: {first}") from None
    return Inception(model, {"inception_weights": source})


class Raw:
    """The examples themselves, flattened."""

    info: dict = {}

    def extract(self, examples):
        return np.asarray(examples).reshape(len(examples), -1), None


@ganflow.hookimpl
def ganflow_register_feature_extractors(register):
    register("classifier", classifier_features,
             "a small CNN trained on the labelled dataset, cached (default on labelled images)")
    register("inception", inception_features,
             "InceptionV3 2048-d pool features at 299x299 (ImageNet weights or --weights)")
    register("raw", lambda options: Raw(), "the examples themselves, flattened (toy points)")
