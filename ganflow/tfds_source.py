"""tensorflow-datasets as a source of images: ``tfds:NAME[SLICE]`` checked once (the dataset
known, prepared or downloadable, a train slice in tfds's syntax), for training
(``--dataset tfds:NAME``) and for ``ganflow prepare tfds:NAME DEST``."""

from __future__ import annotations

import hashlib
from functools import cached_property

from ganflow.errors import UsageError

# Where tensorflow-datasets downloads prepared data from first.
TFDS_HOST = ("storage.googleapis.com", 443)


def open_split(argument: str, data_dir: str | None = None):
    """(builder, split) for ``NAME`` or ``NAME[FROM:TO]`` (a slice of the train split):
    prepared, downloaded and prepared if the network answers, else a one-line error that says
    how to prepare it elsewhere. The dataset must have an ``image`` feature."""
    import tensorflow_datasets as tfds

    import ganflow  # its reachable, looked up now: tests make it answer False

    name, bracket, rest = argument.partition("[")
    split = f"train[{rest}" if bracket else "train"
    if bracket and not rest.endswith("]"):
        raise UsageError(f"tfds:{argument}: a slice is NAME[FROM:TO], e.g. tfds:mnist[:10%]")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise UsageError(f"tensorflow-datasets has no dataset {name!r}: see "
                         "`tfds.list_builders()`") from None
    if not builder.is_prepared():
        if not ganflow.reachable(*TFDS_HOST):
            raise UsageError(
                f"tfds:{name} is not prepared in {builder.data_dir} and the network is "
                f"unreachable: run `tfds build {name} --data_dir DIR` on a connected machine, "
                "copy DIR here and pass --data-dir DIR")
        builder.download_and_prepare()
    if "image" not in builder.info.features:
        raise UsageError(f"tfds:{name} has no 'image' feature: it is not an image dataset")
    try:
        builder.info.splits[split].num_examples
    except (ValueError, KeyError) as exc:
        raise UsageError(f"tfds:{argument}: {exc}") from None
    return builder, split


class TfdsImages:
    """A tfds split's images as ``ganflow prepare`` reads files: ``names`` (the examples'
    indices in the split), ``read(name)`` (an example's image as tfds stores it, encoded; read
    in blocks of consecutive examples), ``digest()``, ``labels()``. Picklable, small: a
    worker process reopens the prepared data from its folder, without the builder's class."""

    BLOCK = 1000  # examples read at once

    def __init__(self, text: str, data_dir: str | None = None):
        import tensorflow_datasets as tfds

        builder, split = open_split(text.removeprefix("tfds:"), data_dir)
        self.text, self.directory = text, str(builder.data_dir)
        (self.absolute,) = [(a.splitname, a.from_, a.to) for a in
                            tfds.core.ReadInstruction.from_spec(split).to_absolute(
                                builder.info.splits)]
        self.full_name = builder.info.full_name
        self.channels = builder.info.features["image"].shape[-1]
        self._builder, self._block = builder, {}

    def __getstate__(self):  # what a worker needs: not the builder, a block or the names
        state = {**self.__dict__, "_builder": None, "_block": {}}
        state.pop("names", None)
        return state

    @property
    def location(self) -> str:
        return self.text

    @cached_property
    def names(self) -> list[str]:
        return [str(i) for i in range(self.absolute[2] - self.absolute[1])]

    def _opened(self):
        """The builder; in a worker process, read back from its folder."""
        import tensorflow_datasets as tfds

        if self._builder is None:
            self._builder = tfds.builder_from_directory(self.directory)
        return self._builder

    def _examples(self, start: int, stop: int):
        """Examples ``start`` to ``stop`` of the split, images left encoded."""
        import tensorflow_datasets as tfds

        split, offset, _ = self.absolute
        return self._opened().as_dataset(
            split=f"{split}[{offset + start}:{offset + stop}]", shuffle_files=False,
            decoders={"image": tfds.decode.SkipDecoding()}).as_numpy_iterator()

    def read(self, name: str) -> bytes:
        index = int(name)
        if index not in self._block:
            stop = min(index + self.BLOCK, self.absolute[2] - self.absolute[1])
            self._block = {index + i: example["image"]
                           for i, example in enumerate(self._examples(index, stop))}
        return self._block[index]

    def digest(self) -> str:
        return hashlib.sha256(f"{self.full_name}|{self.absolute}".encode()).hexdigest()[:16]

    def labels(self) -> tuple[list[int] | None, list[str] | None]:
        """(label of each example, the class names) from a ``label`` class feature."""
        import tensorflow_datasets as tfds

        features = self._opened().info.features
        if "label" not in features or not isinstance(features["label"], tfds.features.ClassLabel):
            return None, None
        labels = [int(e["label"]) for e in self._examples(0, len(self.names))]
        return labels, list(features["label"].names)
