"""`ganflow prepare`: a folder or zip of images of every kind, some broken, into TFRecord shards
with a manifest and a skip report; resumable, atomic; and `--dataset prepared:PATH` streaming
them into a run."""

import io
import json
import zipfile

import mlflow
import numpy as np
import pytest
from PIL import Image

import ganflow
from ganflow import dataset_tool, shards
from ganflow.errors import UsageError

from conftest import TINY


def save(path, image, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def photos(tmp_path):
    """A folder in two classes with the images a camera or a scraper leaves, and broken
    files: 10 usable, 4 not."""
    root = tmp_path / "photos"
    save(root / "red" / "rgb.png", Image.new("RGB", (40, 20), (255, 0, 0)))  # wide: cropped
    save(root / "red" / "cmyk.jpg", Image.new("CMYK", (16, 16), (0, 255, 255, 0)))
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    save(root / "red" / "palette.png", palette)
    save(root / "red" / "transparent.png", Image.new("RGBA", (16, 16), (255, 0, 0, 0)))
    frames = [Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))]
    save(root / "red" / "animated.gif", frames[0], save_all=True, append_images=frames[1:])
    rotated = Image.new("RGB", (16, 8), (0, 0, 0))
    rotated.paste((255, 255, 255), (0, 0, 8, 8))  # white on the left half
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise to view
    save(root / "red" / "exif.jpg", rotated, exif=exif, quality=95)
    save(root / "gray" / "grey.png", Image.new("L", (16, 16), 128))
    save(root / "gray" / "sixteen.png", Image.fromarray(np.full((16, 16), 65535, np.uint16)))
    save(root / "gray" / "la.png", Image.new("LA", (16, 16), (0, 0)))
    save(root / "gray" / "bilevel.png", Image.new("1", (16, 16), 1))
    (root / "gray" / "empty.png").write_bytes(b"")
    (root / "gray" / "truncated.png").write_bytes(png_bytes(Image.new("L", (64, 64), 7))[:60])
    (root / "gray" / "text.jpg").write_text("not an image at all")
    (root / "gray" / "garbage.webp").write_bytes(bytes(range(256)) * 4)
    return root


def images_of(dest):
    """The prepared source, and its (image, label) pairs in the files' order: shard by shard
    (training reads the shards interleaved)."""
    import tensorflow as tf

    source = ganflow.prepared(dest)
    manifest = shards.read_manifest(dest)
    spec = {"image": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64)}
    pairs = []
    for shard in manifest.shards:
        for record in tf.data.TFRecordDataset(str(dest / shard["file"])):
            example = tf.io.parse_single_example(record, spec)
            image = np.frombuffer(example["image"].numpy(), np.uint8).reshape(manifest.shape)
            pairs.append((image.astype(np.float32) / 127.5 - 1, int(example["label"])))
    streamed = sorted(float(x.numpy().sum()) for x, _ in source.dataset())
    assert streamed == pytest.approx(sorted(float(x.sum()) for x, _ in pairs), abs=1e-3)
    return source, pairs


def test_prepare_decodes_every_kind_skips_and_names_the_broken(cli, workdir, photos):
    dest = workdir / "prepared"
    result = cli("prepare", photos, dest, "--resolution", "8", "--shard-size", "4")
    assert result.exit_code == 0, result.output
    manifest = shards.read_manifest(dest)
    assert (manifest.count, manifest.shape, manifest.label_names, manifest.skipped) == \
        (10, (8, 8, 3), ["gray", "red"], 4)
    assert [s["count"] for s in manifest.shards] == [2, 2, 4, 2]  # 14 files by name, 4 a shard
    assert manifest.options == {"resolution": 8, "channels": "auto", "crop": "center",
                                "background": "white", "shard_size": 4, "filter": "lanczos"}
    assert result.stdout.splitlines()[0] == (
        f"Prepared 10 images of 8x8x3, 2 labels in 4 shards in {dest} "
        + result.stdout.split(f"in {dest} ")[1].split(")")[0] + "); skipped 4: "
        "2 not an image, 1 truncated, 1 zero bytes; see "
        f"{dest}/skipped.txt")
    report = (dest / "skipped.txt").read_text().splitlines()
    assert sorted(line.split("\t")[1] for line in report if line.startswith("skipped")) == [
        "gray/empty.png", "gray/garbage.webp", "gray/text.jpg", "gray/truncated.png"]
    assert "used\tred/animated.gif\t2 frames: the first used" in report

    source, pairs = images_of(dest)
    assert source.spec == ganflow.DataSpec((8, 8, 3), 10, 2)
    by_name = dict(zip([n for n in dataset_tool.Source(str(photos)).names
                        if n.split("/")[1] not in {"empty.png", "garbage.webp", "text.jpg",
                                                  "truncated.png"}], pairs))
    def rgb(name):
        return by_name[name][0].mean(axis=(0, 1))

    np.testing.assert_allclose(rgb("red/rgb.png"), [1, -1, -1], atol=0.02)
    np.testing.assert_allclose(rgb("red/cmyk.jpg"), [1, -1, -1], atol=0.05)  # CMYK to RGB
    np.testing.assert_allclose(rgb("red/palette.png"), [1, -1, -1], atol=0.02)
    np.testing.assert_allclose(rgb("red/transparent.png"), [1, 1, 1], atol=0.02)  # on white
    np.testing.assert_allclose(rgb("red/animated.gif"), [1, -1, -1], atol=0.05)  # first frame
    np.testing.assert_allclose(rgb("gray/sixteen.png"), [1, 1, 1], atol=0.02)  # 16-bit scaled
    np.testing.assert_allclose(rgb("gray/grey.png"), [0.0039] * 3, atol=0.02)
    exif = by_name["red/exif.jpg"][0].mean(axis=2)  # turned upright: white on the top half
    assert exif[:3].mean() > 0.8 and exif[5:].mean() < -0.8
    assert {label for name, (_, label) in by_name.items() if name.startswith("red/")} == {1}


def test_an_interrupted_prepare_never_trains_and_the_same_command_finishes_it(
        cli, workdir, photos, monkeypatch):
    dest = workdir / "prepared"
    write_shard = shards.write_shard
    written = []

    def interrupted(path, images, labels):  # the second shard is where Ctrl-C lands
        if len(written) == 1:
            raise KeyboardInterrupt
        written.append(path.name)
        write_shard(path, images, labels)

    monkeypatch.setattr(shards, "write_shard", interrupted)
    result = cli("prepare", photos, dest, "--resolution", "8", "--shard-size", "4")
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines()[-1] == (
        f"Stopped by SIGINT with 1 shards done in {dest}: the same command finishes the others")
    assert len(list(dest.glob("shard-*.tfrecord"))) == 1
    trained = cli("run", "--dataset", f"prepared:{dest}", *TINY)
    assert trained.exit_code == 2
    assert trained.stderr.strip().splitlines()[-1] == (
        f"Error: prepared:{dest}: no manifest.json there (an interrupted ganflow prepare: "
        "run it again to finish)")

    monkeypatch.setattr(shards, "write_shard", write_shard)
    calls = []
    monkeypatch.setattr(shards, "write_shard",
                        lambda path, *rest: (calls.append(path.name), write_shard(path, *rest)))
    assert cli("prepare", photos, dest, "--resolution", "8", "--shard-size", "4").exit_code == 0
    assert sorted(calls) == sorted({f"shard-0000{i}.tfrecord" for i in range(4)} - set(written))
    assert shards.read_manifest(dest).count == 10
    again = cli("prepare", photos, dest, "--resolution", "16")
    assert again.exit_code == 2 and "is a prepared dataset already" in again.stderr


def test_a_zip_with_a_labels_file_prepares_as_the_folder_would(cli, workdir):
    archive = workdir / "images.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i in range(6):
            z.writestr(f"img/{i}.png", png_bytes(Image.new("L", (20, 20), 40 * i)))
        z.writestr("dataset.json", json.dumps({"labels": [[f"img/{i}.png", i % 3]
                                                          for i in range(6)]}))
    dest = workdir / "zipped"
    result = cli("prepare", archive, dest, "--resolution", "4", "--channels", "1")
    assert result.exit_code == 0, result.output
    source, pairs = images_of(dest)
    assert source.spec == ganflow.DataSpec((4, 4, 1), 6, 3)
    assert [label for _, label in pairs] == [0, 1, 2, 0, 1, 2]
    np.testing.assert_allclose([x.mean() for x, _ in pairs],
                               [40 * i / 127.5 - 1 for i in range(6)], atol=0.01)


def test_crop_none_skips_what_is_not_square_by_name(workdir):
    root = workdir / "mixed"
    save(root / "square.png", Image.new("L", (10, 10), 0))
    save(root / "wide.png", Image.new("L", (20, 10), 0))
    manifest, skipped = dataset_tool.prepare(str(root), str(workdir / "out"),
                                             dataset_tool.Options(resolution=4, crop="none"),
                                             workers=1)
    assert manifest.count == 1 and skipped == {"not square": 1}
    assert (workdir / "out" / "skipped.txt").read_text() == \
        "skipped\twide.png\tnot square (20x10) and --crop none\n"


def test_a_run_streams_a_prepared_dataset_without_caching_it(cli, workdir, photos):
    dest = workdir / "prepared"
    assert cli("prepare", photos, dest, "--resolution", "32", "--shard-size", "3").exit_code == 0
    result = cli("run", "--dataset", f"prepared:{dest}", "--cache", "none",
                 "--shuffle-buffer-mb", "1", "--epochs", "1", "--steps-per-epoch", "2",
                 "--batch-size", "4", "--eval-every", "0", "--no-register", "-q")
    assert result.exit_code == 0, result.output
    (run,) = mlflow.search_runs(experiment_names=["ganflow"], output_format="list")
    params = run.data.params
    assert (params["dataset"], params["cache"], params["shuffle_buffer_mb"]) == \
        (f"prepared:{dest}", "none", "1")
    assert params["data_digest"] == shards.read_manifest(dest).digest
    (record,) = run.inputs.dataset_inputs  # the run page's Datasets section
    assert (record.dataset.name, record.dataset.digest, record.dataset.source_type) == \
        (f"prepared:{dest}", params["data_digest"], "local")
    assert json.loads(record.dataset.source)["uri"] == dest.resolve().as_uri()


def test_a_tfds_split_prepares_in_parallel_with_its_labels_and_slice(cli, workdir, offline):
    import tensorflow_datasets as tfds

    class GanflowShades(tfds.core.GeneratorBasedBuilder):
        """A real tfds builder, no download: 30 flat 28x28 images, shade 8 i, 3 named classes."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(28, 28, 1)),
                "label": tfds.features.ClassLabel(names=["dark", "mid", "light"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(30):
                yield i, {"image": np.full((28, 28, 1), 8 * i, np.uint8), "label": i % 3}

    GanflowShades(data_dir=str(workdir / "tfds")).download_and_prepare()
    dest = workdir / "shades"
    # Workers are separate processes, where this test's builder class is not defined: they
    # read the prepared data from its folder.
    result = cli("prepare", "tfds:ganflow_shades[5:25]", dest, "--resolution", "32",
                 "--data-dir", workdir / "tfds", "--shard-size", "8", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert "Prepared 20 images of 32x32x1, 3 labels in 3 shards" in result.output
    source, pairs = images_of(dest)
    manifest = shards.read_manifest(dest)
    assert (manifest.label_names, manifest.source) == (["dark", "mid", "light"],
                                                       "tfds:ganflow_shades[5:25]")
    # tfds's own order of the slice (it shuffles examples once, when it prepares them)
    shades = [int(e["image"][0, 0, 0]) // 8 for e in tfds.as_numpy(tfds.builder(
        "ganflow_shades", data_dir=str(workdir / "tfds")).as_dataset(split="train[5:25]"))]
    assert len(set(shades)) == 20 and shades != sorted(shades)
    assert [label for _, label in pairs] == [i % 3 for i in shades]
    np.testing.assert_allclose([x.mean() for x, _ in pairs],
                               [8 * i / 127.5 - 1 for i in shades], atol=0.01)
    assert source.spec == ganflow.DataSpec((32, 32, 1), 20, 3)
    missing = cli("prepare", "tfds:mnist", workdir / "m", "--data-dir", workdir / "empty")
    assert missing.exit_code == 2 and "tfds:mnist is not prepared in" in missing.stderr


SLOW_SOURCE = """
import time

import numpy as np
import tensorflow as tf

import ganflow


def load(options):
    def slowly(x):  # a source that takes 20 ms an example, as a slow disk or decoder would
        time.sleep(0.02)
        return x

    x = np.random.default_rng(0).uniform(-1, 1, (256, 16, 16, 1)).astype(np.float32)
    return ganflow.DataSource(
        ganflow.DataSpec((16, 16, 1), len(x)),
        lambda: tf.data.Dataset.from_tensor_slices(x).map(
            lambda e: tf.ensure_shape(tf.numpy_function(slowly, [e], tf.float32), e.shape)))


@ganflow.hookimpl
def ganflow_register_datasets(register):
    register("slow", load)
"""


def test_a_run_whose_steps_wait_on_data_says_so_and_one_that_does_not_stays_quiet(cli,
                                                                                  workdir):
    from conftest import write_plugin

    plugin = write_plugin(workdir / "slow.py", SLOW_SOURCE)
    common = ["--epochs", "1", "--steps-per-epoch", "26", "--batch-size", "8",
              "--eval-every", "0", "--no-register", "-q"]
    slow = cli("run", "--plugin-module", plugin, "--dataset", "slow", "--cache", "none",
               *common)
    assert slow.exit_code == 0, slow.output
    fast = cli("run", "--dataset", "digits", "--cache", "none", *common)
    assert fast.exit_code == 0, fast.output
    runs = {r.data.params["dataset"] + r.data.params["cache"]: r for r in
            mlflow.search_runs(experiment_names=["ganflow"], output_format="list")}
    slow_rate = float(runs["slownone"].data.tags["ganflow.input_examples_per_s"])
    assert 20 < slow_rate < 55  # 50 examples/s at most, one at a time
    warning = [line for line in slow.stderr.splitlines() if "input-bound" in line]
    assert len(warning) == 1 and warning[0].startswith("Warning: training is input-bound: "
                                                       "the data pipeline gives ")
    assert runs["slownone"].data.tags["ganflow.input_bound"] in warning[0]
    # The digits in memory give thousands a second: no warning.
    assert float(runs["digitsnone"].data.tags["ganflow.input_examples_per_s"]) > 1000
    assert 0 < float(runs["digitsnone"].data.tags["ganflow.train_examples_per_s"]) < \
        float(runs["digitsnone"].data.tags["ganflow.input_examples_per_s"]) / 2
    assert "ganflow.input_bound" not in runs["digitsnone"].data.tags
    assert "input-bound" not in fast.stderr


@pytest.mark.parametrize("count, by_file", [(4, True), (1, False)], ids=["4 shards", "1 shard"])
def test_each_worker_of_a_multiworker_run_reads_its_own_shards(workdir, monkeypatch, count,
                                                               by_file):
    # What MultiWorkerMirroredStrategy does to the run's pipeline on each worker (tf.data's
    # auto-shard rewrite, with the policy the pipeline asks for), applied here as worker 0
    # and 1 of a cluster of 2.
    from tensorflow.python.data.experimental.ops.distribute import _AutoShardDataset

    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker",
                                                                        "index": 0}}))

    from ganflow.data import training_pipeline

    dest = workdir / "shades"
    dest.mkdir()
    shard_size = 8
    for shard in range(count):  # shard k's image i is all of shade 10 k + i
        shards.write_shard(dest / f"shard-{shard:05d}.tfrecord",
                           np.broadcast_to(10 * shard + np.arange(shard_size, dtype=np.uint8)
                                           [:, None, None, None], (shard_size, 4, 4, 1)),
                           np.zeros(shard_size, np.int64))
    shards.Manifest(count=count * shard_size, resolution=4, channels=1,
                    shards=[{"file": f"shard-{k:05d}.tfrecord", "count": shard_size}
                            for k in range(count)],
                    label_names=None, source="test", source_digest="0", options={}, skipped=0,
                    ganflow=ganflow.__version__).write(dest)
    pipeline = training_pipeline(ganflow.prepared(dest), 4, seed=0, cache="none")
    shades = []
    for worker in (0, 1):
        batches = _AutoShardDataset(pipeline, num_workers=2, index=worker).take(12 if by_file
                                                                                else 1)
        shades.append([round((float(x.numpy().flat[0]) + 1) * 127.5)
                       for batch in batches for x in batch])
    if by_file:  # each its own files, half of them
        assert [{s // 10 for s in seen} for seen in shades] == [{0, 2}, {1, 3}]
    else:  # fewer files than workers: each reads them all and keeps its share (tf.data's
        # file sharding would stop the run with "the dataset only has 1 file(s)")
        assert [len(seen) for seen in shades] == [4, 4]
        assert set(shades[0] + shades[1]) <= set(range(8))


def test_what_is_not_prepared_or_not_a_source_is_one_line(cli, workdir):
    (workdir / "empty").mkdir()
    with pytest.raises(UsageError, match=r"empty: no image files"):
        dataset_tool.Source(str(workdir / "empty"))
    result = cli("prepare", workdir / "nothing-here", workdir / "out")
    assert result.exit_code == 2
    assert result.stderr.strip() == \
        f"Error: {workdir / 'nothing-here'}: not a folder or a zip file of images"


def test_a_prepared_dataset_s_reference_features_are_computed_once_from_all_of_it(
        cli, workdir, photos, plugins, monkeypatch):
    from ganflow import evaluation

    monkeypatch.setenv("GANFLOW_CACHE_DIR", str(workdir / "cache"))
    dest = workdir / "prepared"
    assert cli("prepare", photos, dest, "--resolution", "8", "--shard-size", "3").exit_code == 0
    source = ganflow.prepared(dest)
    said = []
    first = evaluation.build(plugins, source, f"prepared:{dest}", "raw", real_examples=10,
                             log=said.append)
    second = evaluation.build(plugins, source, f"prepared:{dest}", "raw", real_examples=10,
                              log=said.append)
    key = first.info["reference"]
    assert second.info["reference"] == key and first.params["eval_reference"] == key
    assert len(said) == 1 and said[0].startswith(f"Reference features of 10 examples of the "
                                                 f"whole dataset kept as {key}")
    np.testing.assert_array_equal(first.real_features, second.real_features)
    assert (workdir / "cache" / "references" / f"{key}.npz").exists()
    # Another number of examples is another reference.
    other = evaluation.build(plugins, source, f"prepared:{dest}", "raw", real_examples=5,
                             log=said.append)
    assert other.info["reference"] != key and len(other.real_features) == 5


def test_a_prepared_dataset_s_evaluator_is_built_again_without_reading_its_images(
        cli, workdir, photos, plugins, monkeypatch):
    from ganflow import evaluation
    from ganflow_plugins import features

    # The domain classifier and the reference features are kept by the manifest's digest: a
    # later run finds both without reading (or holding) the images, 4.9 GB of them at 100,000
    # images of 64 px.
    monkeypatch.setenv("GANFLOW_CACHE_DIR", str(workdir / "cache"))
    monkeypatch.setattr(features, "CLASSIFIER_UPDATES", 2)
    dest = workdir / "prepared"
    assert cli("prepare", photos, dest, "--resolution", "8", "--shard-size", "3").exit_code == 0
    said = []
    first = evaluation.build(plugins, ganflow.prepared(dest), f"prepared:{dest}", "classifier",
                             real_examples=6, log=said.append)
    assert [line.split(":")[0] for line in said][:1] == ["Training the domain classifier"]
    shards = sorted(p for p in dest.iterdir() if p.suffix != ".json")
    assert len(shards) >= 4
    for shard in shards:
        if shard.is_file():
            shard.write_bytes(b"")  # were they read, the run would fail on them
    again = evaluation.build(plugins, ganflow.prepared(dest), f"prepared:{dest}", "classifier",
                             real_examples=6, log=said.append)
    assert "from the cache" in said[-1]
    assert again.info == first.info and again.info["reference"] == first.info["reference"]
    np.testing.assert_array_equal(again.real_features, first.real_features)
    assert len(again.real_features) == 6
    np.testing.assert_array_equal(again.data_histogram, first.data_histogram)
