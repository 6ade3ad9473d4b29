import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import ganflow
from ganflow_plugins.datasets import load_digits, load_folder, load_tfds


def first_examples(source, n):
    return np.stack([x.numpy() for x in source.examples().take(n)])


def test_digits_are_the_real_1797_at_32_pixels_in_range():
    source = load_digits(ganflow.DatasetOptions())
    assert source.spec == ganflow.DataSpec(shape=(32, 32, 1), size=1797, num_classes=10)
    x = first_examples(source, 1797)
    assert x.shape == (1797, 32, 32, 1)
    assert x.min() == -1.0 and x.max() == pytest.approx(1.0, abs=0.01)
    labels = [int(y) for _, y in source.dataset().take(10)]
    assert labels == list(range(10))  # scikit-learn's digits begin 0, 1, ..., 9


def test_digits_image_size_option():
    assert load_digits(ganflow.DatasetOptions(image_size=64)).spec.shape == (64, 64, 1)


def write_png(path, value, size=(12, 12), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


def test_folder_skips_and_counts_corrupt_files_and_labels_by_subfolder(tmp_path):
    for i in range(3):
        write_png(tmp_path / "cats" / f"{i}.png", 255)
    for i in range(2):
        write_png(tmp_path / "dogs" / f"{i}.png", 0)
    (tmp_path / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "cats" / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")

    source = load_folder(ganflow.DatasetOptions(argument=str(tmp_path)))
    assert source.spec == ganflow.DataSpec(shape=(12, 12, 1), size=5, num_classes=2)
    digest = source.info.pop("digest")  # of the prepared copy it streams from (ganflow's cache)
    assert source.info == {"images_read": 5, "images_skipped": 2} and len(digest) == 16
    pairs = [(float(x.numpy().mean()), int(y)) for x, y in source.dataset()]
    assert sorted(pairs) == [(-1.0, 1), (-1.0, 1), (1.0, 0), (1.0, 0), (1.0, 0)]


def test_folder_of_mixed_sizes_and_colour_is_cropped_to_rgb(tmp_path):
    write_png(tmp_path / "a.png", (255, 0, 0), size=(40, 20), mode="RGB")
    write_png(tmp_path / "b.png", 128, size=(16, 16))
    source = load_folder(ganflow.DatasetOptions(argument=str(tmp_path), image_size=8))
    assert source.spec.shape == (8, 8, 3) and source.spec.num_classes is None
    red = first_examples(source, 1)[0]
    np.testing.assert_allclose(red[..., 0], 1.0)
    np.testing.assert_allclose(red[..., 1:], -1.0)


def test_folder_with_nothing_readable_says_so(tmp_path):
    (tmp_path / "x.png").write_bytes(b"garbage")
    with pytest.raises(ganflow.UsageError, match=r"none of its 1 image files could be read"):
        load_folder(ganflow.DatasetOptions(argument=str(tmp_path)))
    with pytest.raises(ganflow.UsageError, match="no such folder"):
        load_folder(ganflow.DatasetOptions(argument=str(tmp_path / "missing")))
    (tmp_path / "x.png").unlink()
    with pytest.raises(ganflow.UsageError, match="no image files"):
        load_folder(ganflow.DatasetOptions(argument=str(tmp_path)))


class GanflowTinyDigits(tfds.core.GeneratorBasedBuilder):
    """A real tfds builder that needs no download: 20 labelled 28x28 images."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1)),
            "label": tfds.features.ClassLabel(num_classes=2),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(20):
            yield i, {"image": np.full((28, 28, 1), 255 * (i % 2), np.uint8), "label": i % 2}


def test_tfds_loads_a_prepared_dataset(tmp_path):
    GanflowTinyDigits(data_dir=str(tmp_path)).download_and_prepare()
    source = load_tfds(ganflow.DatasetOptions(argument="ganflow_tiny_digits",
                                              data_dir=str(tmp_path)))
    assert source.spec == ganflow.DataSpec(shape=(28, 28, 1), size=20, num_classes=2)
    for x, y in source.dataset():
        assert float(x.numpy().mean()) == (1.0 if int(y) else -1.0)
    resized = load_tfds(ganflow.DatasetOptions("ganflow_tiny_digits", str(tmp_path), 32))
    assert first_examples(resized, 2).shape == (2, 32, 32, 1)


def test_tfds_offline_and_unprepared_fails_fast_with_advice(tmp_path, offline):
    started = time.monotonic()
    with pytest.raises(ganflow.UsageError) as err:
        load_tfds(ganflow.DatasetOptions(argument="mnist", data_dir=str(tmp_path)))
    assert time.monotonic() - started < 30  # not tfds's 200-second retry loop
    assert "tfds:mnist is not prepared in" in str(err.value)
    assert "`tfds build mnist --data_dir DIR`" in str(err.value)


def test_tfds_unknown_dataset():
    with pytest.raises(ganflow.UsageError, match="tensorflow-datasets has no dataset 'no_such_ds'"):
        load_tfds(ganflow.DatasetOptions(argument="no_such_ds"))


def test_reachable_tells_an_open_port_from_a_closed_one():
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert ganflow.reachable("127.0.0.1", port, timeout=2)
    assert not ganflow.reachable("127.0.0.1", port, timeout=2)  # closed now


def test_a_data_fraction_is_a_fixed_subset_and_evaluations_keep_the_whole_dataset(plugins,
                                                                                   workdir):
    from ganflow.prepare import prepare
    from ganflow.resolve import configure, resolve

    def prepared(seed, fraction=0.1):
        return prepare(resolve(configure(plugins, "dcgan", {
            "data_fraction": fraction, "seed": seed, "eval_samples": 100,
            "precision": "float32"}), plugins))

    first, other = prepared(0), prepared(5)
    assert first.source.spec.size == round(0.1 * 1797) == 180
    assert first.steps_per_epoch == 180 // 32  # an epoch is a pass over the share

    def examples(p):
        return np.stack([x for x, _ in p.source.dataset().as_numpy_iterator()])

    chosen = examples(first)
    assert chosen.shape == (180, 32, 32, 1)
    np.testing.assert_array_equal(chosen, examples(other))  # the same share whatever the seed
    assert len({x.tobytes() for x in chosen}) == 180  # no example twice
    # Evaluations compare with the whole dataset, not the share.
    assert first.evaluator.params["eval_real_examples"] == 100
    assert first.params()["data_size"] == 180 and first.params()["data_full_size"] == 1797
    full = prepare(resolve(configure(plugins, "dcgan", {"eval_samples": 100,
                                                        "precision": "float32"}), plugins))
    np.testing.assert_array_equal(first.evaluator.real_features, full.evaluator.real_features)


def test_tfds_takes_a_slice_of_its_train_split(tmp_path):
    GanflowTinyDigits(data_dir=str(tmp_path)).download_and_prepare()
    tenth = load_tfds(ganflow.DatasetOptions(argument="ganflow_tiny_digits[:10%]",
                                             data_dir=str(tmp_path)))
    assert tenth.spec == ganflow.DataSpec(shape=(28, 28, 1), size=2, num_classes=2)
    assert len(list(tenth.dataset())) == 2
    middle = load_tfds(ganflow.DatasetOptions(argument="ganflow_tiny_digits[5:9]",
                                              data_dir=str(tmp_path)))
    assert middle.spec.size == 4 and len(list(middle.dataset())) == 4
    with pytest.raises(ganflow.UsageError, match=r"a slice is NAME\[FROM:TO\]"):
        load_tfds(ganflow.DatasetOptions(argument="ganflow_tiny_digits[:10%",
                                         data_dir=str(tmp_path)))
