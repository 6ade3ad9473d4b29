"""Stacked MNIST on the bundled digits: the stacked-digits dataset (its triples, labels and
fixed draw), the per-channel classifier, modes_captured and kl_to_uniform with real data's
floor, and a run that logs them."""

import importlib.util
import math
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

import ganflow
from ganflow import evaluation
from ganflow_plugins.stacked import STACK_SEED

from conftest import TINY

BENCH = Path(__file__).resolve().parent.parent / "bench" / "stacked_table.py"


def stacked(plugins, n):
    return plugins.datasets.get("stacked-digits").obj(ganflow.DatasetOptions(argument=str(n)))


def test_each_example_is_three_bundled_digits_labelled_by_their_classes(plugins):
    source = stacked(plugins, 300)
    digits = plugins.datasets.get("digits").obj(ganflow.DatasetOptions())
    images, labels = next(digits.dataset().batch(2000).as_numpy_iterator())
    x, y = next(source.dataset().batch(300).as_numpy_iterator())
    triples = np.random.default_rng(STACK_SEED).integers(0, len(images), (300, 3))
    assert source.spec.shape == (32, 32, 3) and source.spec.size == 300
    assert source.spec.num_classes == 1000 and source.channel_source is not None
    np.testing.assert_array_equal(x, np.concatenate([images[triples[:, c]] for c in range(3)],
                                                    axis=-1))
    np.testing.assert_array_equal(y, 100 * labels[triples[:, 0]] + 10 * labels[triples[:, 1]]
                                  + labels[triples[:, 2]])
    again, _ = next(stacked(plugins, 300).dataset().batch(300).as_numpy_iterator())
    np.testing.assert_array_equal(again, x)  # the same set in every run
    assert len(np.unique(y)) > 250  # 300 draws of 1,000 modes


@pytest.mark.parametrize("argument", ["0", "many"])
def test_a_count_that_is_not_a_whole_number_from_1_is_refused(plugins, argument):
    with pytest.raises(ganflow.UsageError, match="whole number"):
        stacked(plugins, argument)


def test_mode_metrics_count_classes_and_measure_kl_to_uniform():
    got = evaluation.mode_metrics(np.array([0, 0, 1, 2]), 4)
    assert got["modes_captured"] == 3.0
    assert got["kl_to_uniform"] == pytest.approx(0.5 * math.log(2.0))  # p = 1/2, 1/4, 1/4
    assert evaluation.mode_metrics(np.zeros(10, int), 1000)["kl_to_uniform"] == \
        pytest.approx(math.log(1000))


def test_the_evaluation_classifies_each_channel_and_reports_real_data_s_floor(plugins):
    source = stacked(plugins, 2000)
    scorer = evaluation.build(plugins, source, "stacked-digits:2000", real_examples=1000,
                              log=lambda line: None)
    params = scorer.params
    assert params["eval_classifier_channels"] == 3 and params["eval_feature_dim"] == 384
    assert params["eval_classifier_test_accuracy"] > 0.97  # per channel, held-out digits
    # 1,000 real examples: about 1000 (1 - e^-1) = 632 of the 1,000 modes have one.
    assert 580 <= params["eval_real_modes_captured"] <= 680
    x, _ = next(source.dataset().skip(1000).batch(1000).as_numpy_iterator())
    real = scorer(x)
    assert abs(real["modes_captured"] - params["eval_real_modes_captured"]) < 50
    assert real["kl_to_uniform"] == pytest.approx(params["eval_real_kl_to_uniform"], abs=0.1)
    collapsed = scorer(np.repeat(x[:1], 1000, axis=0))
    assert collapsed["modes_captured"] == 1.0
    assert collapsed["kl_to_uniform"] == pytest.approx(math.log(1000))


def test_a_run_on_stacked_digits_logs_modes_and_kl_to_uniform(cli, workdir):
    result = cli("run", "--dataset", "stacked-digits:512", *TINY)
    assert result.exit_code == 0, result.output
    (run,) = mlflow.search_runs(experiment_names=["ganflow"], output_format="list")
    metrics, params = run.data.metrics, run.data.params
    assert 1 <= metrics["eval/modes_captured"] <= 1000
    assert 0 <= metrics["eval/kl_to_uniform"] <= math.log(1000) + 1e-6
    assert float(params["eval_real_modes_captured"]) > 100
    assert params["dataset"] == "stacked-digits:512"


def test_a_conditional_run_on_its_1000_classes_ends_with_near_square_grids(cli, workdir):
    # One row per class made each epoch's grid 1,000 rows tall: MLflow refused to log it and
    # the run's animation failed at the end (a GIF is at most 65,535 pixels a side).
    result = cli("run", "--dataset", "stacked-digits:512", "--conditional", *TINY)
    assert result.exit_code == 0, result.output
    (run,) = mlflow.search_runs(experiment_names=["ganflow"], output_format="list")
    samples = workdir / "ganflow-runs" / run.info.run_id / "samples"
    side = 8 * 34 + 2  # 8 x 8 tiles of 32 pixels, each with 2 pixels of padding, scaled 2x
    assert Image.open(samples / "epoch_0002.png").size == (2 * side, 2 * side)
    assert (samples.parent / "samples.gif").stat().st_size > 0
    shown = cli("sample", "models:/dcgan-generator@latest", "-n", "12", "-o", "twelve.png")
    assert shown.exit_code == 0, shown.output
    assert Image.open(workdir / "twelve.png").size == (2 * (4 * 34 + 2), 2 * (3 * 34 + 2))


def test_stacked_mnist_stacks_tfds_mnist_where_it_is_prepared(plugins, tmp_path, offline):
    import tensorflow_datasets as tfds

    class LocalMnist(tfds.image_classification.MNIST, skip_registration=True):
        """tfds's MNIST, prepared from 50 local digits instead of downloaded ones."""

        name = "mnist"

        def _split_generators(self, dl_manager):
            return {"train": self._local(50), "test": self._local(10)}

        def _local(self, n):
            for i in range(n):
                yield i, {"image": np.full((28, 28, 1), 5 * i, np.uint8), "label": i % 10}

    load = plugins.datasets.get("stacked-mnist").obj
    with pytest.raises(ganflow.UsageError, match=r"tfds:mnist is not prepared in .*"
                                                  r"`tfds build mnist --data_dir DIR`"):
        load(ganflow.DatasetOptions(argument="40", data_dir=str(tmp_path)))
    LocalMnist(data_dir=str(tmp_path)).download_and_prepare()
    source = load(ganflow.DatasetOptions(argument="40", data_dir=str(tmp_path)))
    assert source.spec == ganflow.DataSpec((28, 28, 3), 40, 1000)
    assert source.info["channels_of"] == "tfds:mnist" and source.channel_source.spec.size == 50
    x, y = next(source.dataset().batch(40).as_numpy_iterator())
    shades = np.rint((x[:, 0, 0, :] + 1) * 127.5 / 5).astype(int)  # each channel: digit i's 5 i
    np.testing.assert_array_equal(y, shades[:, 0] % 10 * 100 + shades[:, 1] % 10 * 10
                                  + shades[:, 2] % 10)
    triples = np.random.default_rng(STACK_SEED).integers(0, 50, (40, 3))
    base = np.array([int(v) for v in np.rint((next(source.channel_source.dataset().batch(50)
                                                    .as_numpy_iterator())[0][:, 0, 0, 0] + 1)
                                                  * 127.5 / 5)])
    np.testing.assert_array_equal(shades, base[triples])  # tfds's order, the fixed triples


def test_the_stacked_recipe_trains_on_stacked_digits_and_counts_modes_on_26000(cli, workdir,
                                                                               plugins):
    recipe = plugins.recipes.get("stacked").obj
    assert recipe["dataset"] == "stacked-digits" and recipe["eval_samples"] == 26_000
    assert recipe["eval_every"] == 1
    _, architecture = plugins.architecture(recipe["arch"])
    assert (architecture.width, architecture.d_width) == (64, 64)
    result = cli("run", "--plugin", "stacked", "--dataset", "stacked-digits:512", *TINY)
    assert result.exit_code == 0, result.output
    (run,) = mlflow.search_runs(experiment_names=["ganflow"], output_format="list")
    # The dcgan recipe, twice as wide, with lazy R1 (docs/stacked-mnist.md).
    assert run.data.params["arch"] == "dcgan:width=64"
    assert run.data.params["regularizers"] == "r1:gamma=1,every=16"
    assert run.data.params["loss"] == "non-saturating"
    assert 1 <= run.data.metrics["eval/modes_captured"] <= 1000


def load_table():
    spec = importlib.util.spec_from_file_location("stacked_table", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["stacked_table"] = module
    spec.loader.exec_module(module)
    return module


def test_the_table_runs_a_recipe_in_table_3_with_d_a_quarter_of_g_s_width(plugins):
    table = load_table()
    arch = plugins.recipes.get("stacked").obj["arch"]
    table2 = table.flags("table2", "recipe", "stacked", 4000, arch)
    assert "--arch" not in table2 and table2[table2.index("--eval-samples") + 1] == "26000"
    table3 = table.flags("table3", "recipe", "stacked", 4000, arch)
    _, small = plugins.architecture(table3[table3.index("--arch") + 1])
    assert (small.width, small.d_width) == (64, 16)
    assert table3[table3.index("--eval-samples") + 1] == "25600"
    assert table.quarter_d("dcgan:sn") == "dcgan:sn=true,d_width=8"  # the default width, 32
    with pytest.raises(SystemExit, match="dcgan architecture, not 'resnet:width=64'"):
        table.quarter_d("resnet:width=64")


def test_the_modes_are_the_channel_classes_whatever_the_data_s_own_labels(plugins):
    """A channel-source dataset labelled otherwise (clusters, say), or not at all, still has
    10 ** 3 modes: the mode count and the floor do not follow its labels."""
    source = stacked(plugins, 2000)
    clustered = ganflow.DataSource(
        ganflow.DataSpec(shape=source.spec.shape, size=2000, num_classes=7),
        lambda: source.dataset().map(lambda x, y: (x, y % 7)), labelled=True,
        channel_source=source.channel_source, info={"channels_of": "digits"})
    plain = ganflow.DataSource(
        ganflow.DataSpec(shape=source.spec.shape, size=2000),
        lambda: source.dataset().map(lambda x, y: x), channel_source=source.channel_source,
        info={"channels_of": "digits"})
    x, _ = next(source.dataset().skip(1000).batch(1000).as_numpy_iterator())
    for data in (clustered, plain):
        assert evaluation.default_features(data) == "classifier"
        scorer = evaluation.build(plugins, data, "stacked-clusters", real_examples=1000,
                                  log=lambda line: None)
        assert scorer.modes == 1000
        assert 580 <= scorer.params["eval_real_modes_captured"] <= 680  # not at most 7
        got = scorer(x)
        assert 580 <= got["modes_captured"] <= 680
        assert got["kl_to_uniform"] == pytest.approx(scorer.params["eval_real_kl_to_uniform"],
                                                     abs=0.1)
