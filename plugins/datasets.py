"""Image datasets: ``digits`` (bundled, offline), ``tfds:NAME`` and ``folder:PATH``.

Every source yields float32 images in [-1, 1], shaped (size, size, channels), with labels
where the data has them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import ganflow

DIGITS_SIZE = 32
FOLDER_DEFAULT_SIZE = 64


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    import tensorflow as tf

    if images.shape[1] == size and images.shape[2] == size:
        return images
    return tf.image.resize(images, (size, size), method="bilinear").numpy()


def load_digits(options: ganflow.DatasetOptions) -> ganflow.DataSource:
    """The 1,797 8x8 handwritten digits scikit-learn ships inside its package."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = digits.images[..., None].astype(np.float32) / 16.0 * 2.0 - 1.0
    images = np.clip(_resize(images, options.image_size or DIGITS_SIZE), -1.0, 1.0)
    return ganflow.DataSource.from_arrays(images, digits.target, num_classes=10)


def load_tfds(options: ganflow.DatasetOptions) -> ganflow.DataSource:
    """A tensorflow-datasets image dataset's train split, or a slice of it in tfds's split
    syntax: tfds:mnist, tfds:cifar10, tfds:mnist[:10%], tfds:mnist[1000:2000]."""
    import tensorflow as tf

    from ganflow.tfds_source import open_split

    builder, split = open_split(options.argument, options.data_dir)
    name = options.argument.partition("[")[0]
    features = builder.info.features
    height, width, channels = features["image"].shape
    size = options.image_size or height
    if height is None or (height != width and not options.image_size):
        raise ganflow.UsageError(f"tfds:{name} has images of varying or non-square size: "
                                 "pass --image-size N")
    has_labels = "label" in features and hasattr(features["label"], "num_classes")

    count = builder.info.splits[split].num_examples

    def make():
        ds = builder.as_dataset(split=split, shuffle_files=False)

        def convert(example):
            image = tf.cast(example["image"], tf.float32) / 127.5 - 1.0
            if size != height or height != width:
                image = tf.image.resize(image, (size, size))
            if has_labels:
                return image, example["label"]
            return image

        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

    spec = ganflow.DataSpec(
        shape=(size, size, channels),
        size=count,
        num_classes=features["label"].num_classes if has_labels else None,
    )
    return ganflow.DataSource(spec, make, labelled=has_labels)


def load_folder(options: ganflow.DatasetOptions) -> ganflow.DataSource:
    """Every image under a folder (first-level subfolders, when there are several, are
    labels), prepared once into ganflow's cache as ``ganflow prepare`` would, then streamed."""
    root = Path(options.argument).expanduser()
    if not root.is_dir():
        raise ganflow.UsageError(f"folder:{options.argument}: no such folder")
    try:
        return ganflow.prepared_cache(str(root), options.image_size, FOLDER_DEFAULT_SIZE)
    except ganflow.UsageError as exc:
        raise ganflow.UsageError(f"folder:{options.argument}: {str(exc).split(': ', 1)[1]}") \
            from None


def load_prepared(options: ganflow.DatasetOptions) -> ganflow.DataSource:
    """A dataset ``ganflow prepare`` made: streamed from its shards."""
    return ganflow.prepared(options.argument)


@ganflow.hookimpl
def ganflow_register_datasets(register):
    register("digits", load_digits, "1,797 handwritten digits from scikit-learn, 32x32, offline")
    register("tfds", load_tfds, "a tensorflow-datasets image dataset, e.g. tfds:mnist",
             argument="NAME")
    register("folder", load_folder, "every image in a folder tree", argument="PATH")
    register("prepared", load_prepared, "a dataset ganflow prepare made, streamed from its "
             "shards", argument="PATH")
