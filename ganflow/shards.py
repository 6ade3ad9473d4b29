"""A prepared dataset: what ``ganflow prepare`` writes and ``--dataset prepared:PATH`` streams.

A folder of TFRecord shards (``shard-00000.tfrecord``, ...), each record one image as raw
uint8 bytes (height x width x channels) and its label, with ``manifest.json`` beside them,
written last: a folder without it is not a prepared dataset (an interrupted prepare never
leaves something that trains). TFRecord because TensorFlow reads it natively, file by file,
with interleaved parallel reads, and a multi-worker run shards it by file; raw bytes because
decoding them is a reshape, so the input pipeline costs the training step nothing (PNG in the
records would save disk and cost a decode per image per epoch).

The manifest says how many images, their shape, the label names, the digest of the source's
file list, every option used, the shards and their counts, and ganflow's version; its own
digest names the dataset (in evaluations' reference statistics, and in MLflow's dataset
record of a run).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ganflow import devices
from ganflow.errors import UsageError

MANIFEST = "manifest.json"
FORMAT = 1


@dataclass(frozen=True)
class Manifest:
    count: int
    resolution: int
    channels: int
    shards: list[dict]  # {"file": name, "count": n}, in order
    label_names: list[str] | None = None
    source: str = ""
    source_digest: str = ""
    options: dict = field(default_factory=dict)
    skipped: int = 0
    ganflow: str = ""
    format: int = FORMAT

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.resolution, self.resolution, self.channels)

    @property
    def digest(self) -> str:
        """What names this dataset: its content's description, but not where it lies."""
        text = json.dumps({k: v for k, v in asdict(self).items() if k != "source"},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def write(self, folder: Path) -> None:
        staging = Path(folder) / f".{MANIFEST}.tmp"
        staging.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(staging, Path(folder) / MANIFEST)


def read_manifest(folder: str | Path) -> Manifest:
    folder = Path(folder).expanduser()
    path = folder / MANIFEST
    if not path.exists():
        how = ("an interrupted ganflow prepare: run it again to finish" if
               any(folder.glob("shard-*")) else "not made by ganflow prepare")
        raise UsageError(f"prepared:{folder}: no {MANIFEST} there ({how})")
    values = json.loads(path.read_text())
    if values.get("format") != FORMAT:
        raise UsageError(f"prepared:{folder}: format {values.get('format')} is not this "
                         f"ganflow's ({FORMAT}): prepare it again")
    return Manifest(**values)


def write_shard(path: Path, images, labels) -> None:
    """Write ``images`` (n, h, w, c) uint8 and ``labels`` (n,) int to the shard at ``path``,
    under a temporary name renamed when complete."""
    import tensorflow as tf

    staging = path.with_name(f".{path.name}.tmp")
    with tf.io.TFRecordWriter(str(staging)) as writer:
        for image, label in zip(images, labels):
            features = {
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
            }
            writer.write(tf.train.Example(
                features=tf.train.Features(feature=features)).SerializeToString())
    os.replace(staging, path)


def reader(folder: str | Path, manifest: Manifest):
    """A function making the prepared images as a ``tf.data.Dataset`` of float32 images in
    [-1, 1] (with labels when it has them), in the shards' order: shards read interleaved,
    records decoded in parallel."""
    import tensorflow as tf

    files = [str(Path(folder) / shard["file"]) for shard in manifest.shards]
    shape = manifest.shape
    labelled = manifest.label_names is not None
    spec = {"image": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64)}

    def decode(record):
        example = tf.io.parse_single_example(record, spec)
        image = tf.reshape(tf.io.decode_raw(example["image"], tf.uint8), shape)
        image = tf.cast(image, tf.float32) / 127.5 - 1.0
        return (image, example["label"]) if labelled else image

    # Under --strategy multiworker each worker reads its own shards; with fewer shards than
    # workers (tf.data's file sharding then fails mid-run), each reads all and keeps its share.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.FILE if len(files) >= devices.cluster_size()
        else tf.data.experimental.AutoShardPolicy.DATA)

    def make():
        return (tf.data.Dataset.from_tensor_slices(files)
                .interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(files)),
                            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .with_options(options))

    return make


def prepared(folder: str | Path):
    """The prepared dataset in ``folder`` as a ``DataSource`` that streams its shards."""
    from ganflow.types import DataSource, DataSpec

    manifest = read_manifest(folder)
    labelled = manifest.label_names is not None
    spec = DataSpec(manifest.shape, manifest.count,
                    len(manifest.label_names) if labelled else None)
    return DataSource(spec, reader(Path(folder).expanduser(), manifest), labelled=labelled,
                      info={"digest": manifest.digest, "images_skipped": manifest.skipped})
