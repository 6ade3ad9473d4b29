"""ganflow evaluate, feature extractors, --eval-every and the champion alias, end to end."""

import json
import textwrap
import threading
import time

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from conftest import TINY, write_plugin
from ganflow import registry
from ganflow.errors import UsageError
from ganflow.types import DatasetOptions, FeatureOptions

EVAL = ["--eval-every", "1", "--eval-samples", "200"]

BLOBS = textwrap.dedent('''
    import numpy as np
    import ganflow

    def load_blobs(options):
        """96 unlabelled 8x8 images: a bright square at one of 16 places."""
        x = np.full((96, 8, 8, 1), -1.0, np.float32)
        for i in range(96):
            r, c = divmod(i % 16, 4)
            x[i, 2 * r:2 * r + 2, 2 * c:2 * c + 2] = 1.0
        return ganflow.DataSource.from_arrays(x)

    class RowMeans:
        """Features: each row's mean brightness."""
        info = {"rows": "mean"}

        def extract(self, examples):
            return examples.mean(axis=(2, 3)), None

    @ganflow.hookimpl
    def ganflow_register_datasets(register):
        register("blobs", load_blobs, "bright squares, no labels")

    @ganflow.hookimpl
    def ganflow_register_feature_extractors(register):
        register("row-means", lambda options: RowMeans(), "each row's mean brightness")
''')


@pytest.fixture
def blobs(tmp_path):
    return write_plugin(tmp_path / "blobs.py", BLOBS)


@pytest.fixture
def digits(plugins):
    return plugins.datasets.get("digits").obj(DatasetOptions())


def test_digits_classifier_is_accurate_and_cached(plugins, digits, feature_cache):
    lines = []
    options = FeatureOptions(digits, "digits", cache_dir=feature_cache, log=lines.append)
    first = plugins.features.get("classifier").obj(options)
    assert first.info["classifier_test_accuracy"] >= 0.95
    assert first.info["classifier_test_examples"] == 359  # a fifth of 1,797, held out

    x, y = next(digits.dataset().batch(300).as_numpy_iterator())
    features, classes = first.extract(x)
    assert features.shape == (300, 128) and classes.shape == (300,)
    assert np.mean(classes == y) >= 0.95

    again = plugins.features.get("classifier").obj(options)
    assert "from the cache" in lines[-1] and again.info == first.info
    np.testing.assert_allclose(again.extract(x)[0], features, rtol=1e-5, atol=1e-5)
    (cached,) = (p for p in (feature_cache / "classifiers").iterdir()
                 if not p.name.startswith("."))  # not the lock file
    assert sorted(p.name for p in cached.iterdir()) == ["classifier.keras", "info.json"]


def test_runs_needing_the_same_classifier_at_once_train_it_once(plugins, tmp_path,
                                                                 monkeypatch):
    from ganflow.types import DataSource
    from ganflow_plugins import features

    monkeypatch.setattr(features, "CLASSIFIER_UPDATES", 10)
    rng = np.random.default_rng(0)
    source = DataSource.from_arrays(rng.uniform(-1, 1, (200, 8, 8, 1)), rng.integers(0, 2, 200))
    logs = [[], [], []]
    infos = [None] * 3

    def evaluate(i):
        options = FeatureOptions(source, "noise", cache_dir=tmp_path, log=logs[i].append)
        infos[i] = plugins.features.get("classifier").obj(options).info

    threads = [threading.Thread(target=evaluate, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    trained = [log for log in logs if any("Training the domain classifier" in line
                                          for line in log)]
    assert len(trained) == 1, logs
    assert sum("from the cache" in log[-1] for log in logs) == 2, logs
    assert infos[0] == infos[1] == infos[2]
    assert len([p for p in (tmp_path / "classifiers").iterdir()
                if not p.name.startswith(".")]) == 1


def test_the_classifier_learns_from_a_bounded_sample_of_a_large_dataset(plugins, tmp_path,
                                                                        monkeypatch):
    from ganflow.types import DataSource
    from ganflow_plugins import features

    # 600 examples ordered by class (as a prepared folder's shards are), the cap 60 of them:
    # the classifier sees 60, drawn from the whole set (not its first few hundred), every
    # class among them.
    monkeypatch.setattr(features, "CLASSIFIER_UPDATES", 10)
    monkeypatch.setattr(features, "CLASSIFIER_EXAMPLES", 60)
    labels = np.repeat(np.arange(3), 200)
    source = DataSource.from_arrays(np.random.default_rng(0).uniform(-1, 1, (600, 8, 8, 1)),
                                    labels)
    x, y = features._load_labelled(source)
    assert x.shape == (60, 8, 8, 1) and x.dtype == np.float32 and y.dtype == np.int64
    assert len(np.bincount(y)) == 3 and min(np.bincount(y)) >= 10
    again, _ = features._load_labelled(source)
    np.testing.assert_array_equal(again, x)  # the same sample every time: one cache key
    info = plugins.features.get("classifier").obj(
        FeatureOptions(source, "ordered", cache_dir=tmp_path, log=lambda line: None)).info
    assert info["classifier_train_examples"] + info["classifier_test_examples"] == 60
    # A byte budget binds first for big images (512 MiB: 2,730 of 128x128x3).
    monkeypatch.setattr(features, "CLASSIFIER_EXAMPLES", 20_000)
    monkeypatch.setattr(features, "CLASSIFIER_MEMORY", 8 * 8 * 4 * 150)
    assert len(features._load_labelled(source)[0]) == 150
    # Few enough: all of them, in the dataset's order.
    monkeypatch.setattr(features, "CLASSIFIER_MEMORY", 2**30)
    everything, in_order = features._load_labelled(source)
    assert len(everything) == 600 and (in_order == labels).all()


def test_the_reference_streams_past_and_keeps_the_reservoir_s_draw():
    from ganflow import evaluation, noise
    from ganflow.types import DataSource

    # Algorithm R over examples held in memory, as the reference was drawn before it streamed:
    # the streamed draw must be the same examples in the same order (the cached references and
    # the published FIDs depend on it).
    x = np.random.default_rng(1).uniform(-1, 1, (1_300, 4, 4, 2)).astype(np.float32)
    y = np.arange(1_300) % 7
    source = DataSource.from_arrays(x, y)

    def reservoir(count, seed, n):
        rng, kept = noise.rng(seed, "reference"), []
        for seen in range(n):
            if seen < count:
                kept.append(seen)
            elif (slot := rng.integers(0, seen + 1)) < count:
                kept[slot] = seen
        return np.array(kept)

    for count, seed, span in [(100, 0, None), (100, 3, -1), (2_000, 0, None), (37, 5, 250)]:
        n = len(x) if span == -1 else min(span or 5 * count, len(x))
        order = reservoir(count, seed, n)
        got, labels = evaluation.reference(source, count, seed, span)
        np.testing.assert_array_equal(got, x[order])
        np.testing.assert_array_equal(labels, y[order])
        features, classes = evaluation._reference_features(source, Flat(), count, seed, span)
        np.testing.assert_array_equal(features, x[order].reshape(len(order), -1))
        np.testing.assert_array_equal(classes, y[order])
    assert evaluation.chunk_for((4, 4, 2)) == 500 and evaluation.chunk_for((64, 64, 3)) == 125


class Flat:
    """Features: the examples themselves, counted as they are asked for."""
    info: dict = {}

    def __init__(self):
        self.sizes = []

    def extract(self, examples):
        self.sizes.append(len(examples))
        return np.asarray(examples).reshape(len(examples), -1), None


def test_samples_are_made_and_featurized_a_chunk_at_a_time():
    from ganflow import evaluation

    flat = Flat()
    evaluator = evaluation.Evaluator("flat", flat, (8, 8, 1),
                                     np.random.default_rng(0).normal(size=(300, 64)), None)
    made = []

    def sample(z, labels):
        made.append(len(z))
        return np.tanh(z[:, :64]).reshape(-1, 8, 8, 1)

    z = np.random.default_rng(1).normal(size=(1_234, 64)).astype(np.float32)
    streamed = evaluator.sampled(sample, z)
    assert made == [500, 500, 234] and flat.sizes == made
    at_once = evaluator(np.tanh(z).reshape(-1, 8, 8, 1))
    assert streamed == pytest.approx(at_once, rel=1e-9)
    with pytest.raises(UsageError, match=r"the samples have shape \(4, 4, 4\), the data "
                                         r"\(8, 8, 1\)"):
        evaluator.sampled(lambda z, labels: z.reshape(-1, 4, 4, 4), z)


def test_evaluate_a_registered_generator(cli, workdir):
    assert cli("run", *TINY).exit_code == 0
    result = cli("evaluate", "models:/dcgan-generator@latest", "-n", "200", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    # The dataset comes from the run that trained the model; 200 real digits to compare with.
    assert (report["dataset"], report["features"]) == ("digits", "classifier")
    assert (report["samples"], report["real_examples"]) == (200, 200)
    values = report["metrics"]
    assert set(values) == {"fid", "kid", "kid_std", "precision", "recall", "class_coverage",
                           "class_kl"}
    assert values["fid"] > 10  # six generator updates make no digits
    assert 0 <= values["precision"] <= 1 and 0 <= values["class_coverage"] <= 1
    assert report["info"]["classifier_test_accuracy"] >= 0.95

    # The same seed gives the same numbers; the table shows them.
    table = cli("evaluate", "models:/dcgan-generator/1", "-n", "200", "--dataset", "digits")
    assert table.exit_code == 0, table.output
    (fid_line,) = [line for line in table.stdout.splitlines() if line.split()[0] == "fid"]
    assert fid_line.split() == ["fid", f"{values['fid']:.4f}", "(lower", "is", "better)"]
    assert "classifier features (128-d)" in table.stdout


@pytest.mark.parametrize("args, message", [
    (["--features", "inceptoin"], "unknown feature extractor 'inceptoin'; known: classifier, "
                                  "inception, raw (did you mean 'inception'?)"),
    (["--image-size", "16"], "makes samples of shape (32, 32, 1) but digits has examples of "
                             "shape (16, 16, 1)"),
    (["--dataset", "ring8"], "makes samples of shape (32, 32, 1) but ring8 has examples of "
                             "shape (2,)"),
    (["--features", "inception", "--weights", "nope.h5"], "--weights nope.h5: no such file"),
])
def test_evaluate_mistakes_are_one_line(cli, workdir, args, message):
    assert cli("run", *TINY).exit_code == 0
    result = cli("evaluate", "models:/dcgan-generator/1", "-n", "50", *args)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_inception_offline_without_weights_fails_within_seconds(cli, workdir, monkeypatch,
                                                                offline):
    monkeypatch.setenv("KERAS_HOME", str(workdir / "empty-keras-home"))
    assert cli("run", *TINY).exit_code == 0
    started = time.perf_counter()
    result = cli("evaluate", "models:/dcgan-generator/1", "--features", "inception")
    assert time.perf_counter() - started < 15
    assert result.exit_code == 2
    assert "InceptionV3's ImageNet weights are not downloaded" in result.stderr
    assert "use --features classifier" in result.stderr


@pytest.mark.slow
def test_inception_features_from_a_weights_file(cli, workdir):
    import keras

    # The real InceptionV3 with its own (random) initial weights: the ImageNet file is not
    # downloadable here, and the path is the same.
    weights = workdir / "inception.weights.h5"
    keras.applications.InceptionV3(include_top=False, weights=None, pooling="avg",
                                   input_shape=(299, 299, 3)).save_weights(weights)
    assert cli("run", *TINY).exit_code == 0
    result = cli("evaluate", "models:/dcgan-generator/1", "-n", "20", "--features", "inception",
                 "--weights", weights, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["features"] == "inception" and report["info"]["inception_weights"] == str(weights)
    assert report["metrics"]["fid"] > 0 and "class_coverage" not in report["metrics"]


def test_run_evaluates_tags_the_version_and_names_a_champion(cli, workdir):
    result = cli("run", *TINY[:-1], *EVAL, "--ema", "0.9")  # not -q: evaluations are printed
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    (run,) = mlflow.search_runs(experiment_names=["ganflow"], output_format="list")
    run_id = run.info.run_id
    # After each of the two epochs, at the last generator update's step; before training, the
    # baseline is a param, not a point that would flatten the curve.
    fids = client.get_metric_history(run_id, "eval/fid")
    assert [m.step for m in fids] == [3, 6]
    no_ema = client.get_metric_history(run_id, "eval/fid_no_ema")
    assert [m.step for m in no_ema] == [3, 6]
    assert no_ema[-1].value != fids[-1].value
    assert float(run.data.params["untrained.fid"]) > 100  # untrained networks make no digits
    for name in ("kid", "precision", "recall", "class_coverage", "class_kl"):
        assert len(client.get_metric_history(run_id, f"eval/{name}")) == 2
        assert f"untrained.{name}" in run.data.params
    assert run.data.params["eval_features"] == "classifier"
    assert float(run.data.params["eval_classifier_test_accuracy"]) >= 0.95
    assert run.data.params["eval_real_examples"] == "200"

    version = client.get_model_version("dcgan-generator", "1")
    assert float(version.tags["eval.fid"]) == pytest.approx(fids[-1].value, rel=1e-5)
    assert float(version.tags["eval.fid_no_ema"]) == pytest.approx(no_ema[-1].value, rel=1e-5)
    assert (version.tags["eval.features"], version.tags["eval.dataset"],
            version.tags["eval.samples"]) == ("classifier", "digits", "200")
    # Only what compares versions: sample quality and what made it; no losses, no run id.
    assert {k.split(".")[0] for k in version.tags} == {"eval", "train"}
    assert "eval.class_coverage" in version.tags and version.tags["train.ema"] == "0.9"
    assert version.description.startswith(f"Made by run {run_id} (recipe dcgan, loss "
                                          "non-saturating, dataset digits, ema 0.9")
    assert f"fid {version.tags['eval.fid']}, kid " in version.description
    description = client.get_registered_model("dcgan-generator").description
    assert "shape (32, 32, 1)" in description
    assert f"(batch, {run.data.params['latent_dim']})" in description
    assert "ganflow sample models:/dcgan-generator@champion" in description
    # The logged model's page shows the metrics of the weights it holds: the last step's.
    logged = mlflow.get_logged_model(mlflow.models.get_model_info(
        "models:/dcgan-generator/1").model_id)
    model_fid = {m.step: m.value for m in logged.metrics if m.key == "eval/fid"}
    assert model_fid == {6: fids[-1].value}
    champion = client.get_model_version_by_alias("dcgan-generator", "champion")
    assert int(champion.version) == 1
    assert "champion: models:/dcgan-generator@champion is now version 1" in result.stdout
    assert [line.split(":")[0] for line in result.stdout.splitlines()
            if line.startswith("evaluation")] == [f"evaluation after epoch {e}" for e in (0, 1, 2)]

    # ganflow evaluate draws the same noise and real examples: the same numbers, later.
    again = json.loads(cli("evaluate", "models:/dcgan-generator@champion", "-n", "200",
                           "--json").stdout)["metrics"]
    for name in ("fid", "kid", "precision", "recall", "class_coverage"):
        assert again[name] == pytest.approx(float(version.tags[f"eval.{name}"]), rel=1e-4,
                                            abs=1e-6), name

    sampled = cli("sample", "models:/dcgan-generator@champion", "-n", "4", "--npz", "-o", "c.npz")
    assert sampled.exit_code == 0, sampled.output
    assert np.load(workdir / "c.npz")["samples"].shape == (4, 32, 32, 1)


@pytest.mark.slow
def test_fid_falls_as_the_dcgan_recipe_trains(cli, workdir):
    result = cli("run", "--plugin", "dcgan", "--epochs", "10", "--eval-every", "5",
                 "--eval-samples", "2000", "-q")
    assert result.exit_code == 0, result.output
    (run,) = mlflow.search_runs(experiment_names=["ganflow"], output_format="list")
    fids = MlflowClient().get_metric_history(run.info.run_id, "eval/fid")
    assert [m.step for m in fids] == [280, 560]  # 56 generator updates per epoch
    untrained = float(run.data.params["untrained.fid"])
    five, ten = (m.value for m in fids)
    assert five < untrained / 3 and ten < five
    coverage = MlflowClient().get_metric_history(run.info.run_id, "eval/class_coverage")
    assert float(run.data.params["untrained.class_coverage"]) <= 0.2
    assert coverage[-1].value >= 0.9


@pytest.mark.slow
def test_champion_is_the_best_fid_across_runs_and_only_among_comparable_ones(cli, workdir):
    for seed in (0, 1, 2):
        assert cli("run", *TINY, *EVAL, "--seed", seed).exit_code == 0
    client = MlflowClient()
    versions = client.search_model_versions("name='dcgan-generator'")
    best = min(versions, key=lambda v: float(v.tags["eval.fid"]))
    assert client.get_model_version_by_alias("dcgan-generator", "champion").version == best.version

    # FIDs on other features do not compare: the champion stays, and says why.
    other = cli("run", *TINY, *EVAL, "--features", "raw")
    assert other.exit_code == 0, other.output
    assert client.get_model_version_by_alias("dcgan-generator", "champion").version == best.version
    assert "stays version" in other.stdout and "other features" in other.stdout


def test_champion_is_never_lost_when_runs_finish_together(workdir):
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/race.db")
    client = MlflowClient()
    client.create_registered_model("raced")
    rng = np.random.default_rng(0)
    for round_ in range(3):
        # Eight versions finish at once, registered first, then all promoted together.
        fids = rng.uniform(10, 100, 8)
        group = {"eval.features": "classifier", "eval.dataset": "digits", "eval.samples": "200"}
        versions = [
            int(client.create_model_version("raced", str(workdir),
                                            tags={**group, "eval.fid": f"{f}"}).version)
            for f in fids
        ]
        barrier = threading.Barrier(len(versions))
        errors = []

        def finish(version):
            barrier.wait()
            try:
                registry.promote_champion("raced", version)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=finish, args=(v,)) for v in versions]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        every = client.search_model_versions("name='raced'")
        best = min(every, key=lambda v: (float(v.tags["eval.fid"]), int(v.version)))
        assert client.get_model_version_by_alias("raced", "champion").version == best.version, round_


def test_unlabelled_data_and_third_party_features(cli, workdir, blobs, monkeypatch, offline):
    monkeypatch.setenv("KERAS_HOME", str(workdir / "empty-keras-home"))
    base = ["run", "--plugin-module", blobs, "--dataset", "blobs", "--batch-size", "16",
            *TINY[:4], "-q", *EVAL[:2], "--eval-samples", "40"]
    # No labels: the classifier cannot be trained, and the default (inception) has no weights.
    refused = cli(*base, "--features", "classifier")
    assert refused.exit_code == 2
    assert "blobs has no labels: use --features inception" in refused.stderr
    default = cli(*base)
    assert default.exit_code == 2 and "--features classifier" in default.stderr
    assert mlflow.search_runs(experiment_names=["ganflow"], output_format="list") == []

    listed = json.loads(cli("plugins", "--plugin-module", blobs, "--json").stdout)
    extractors = {row["name"]: row["plugin"] for row in listed["feature extractors"]}
    assert extractors["row-means"] == blobs and extractors["classifier"] == "ganflow_plugins.features"

    # The dcgan recipe evaluates every 25 epochs; on data without labels it trains without.
    unasked = cli(*base[:-4])
    assert unasked.exit_code == 0, unasked.output
    assert "Not evaluating: blobs has no labels" in unasked.stderr
    (run,) = mlflow.search_runs(experiment_names=["ganflow"], output_format="list")
    assert not [k for k in run.data.metrics if k.startswith("eval")]
    mlflow.delete_run(run.info.run_id)

    ran = cli(*base, "--features", "row-means")
    assert ran.exit_code == 0, ran.output
    (run,) = mlflow.search_runs(experiment_names=["ganflow"], output_format="list")
    assert run.data.params["eval_features"] == "row-means" and run.data.params["eval_rows"] == "mean"
    assert run.data.tags["ganflow.plugin.features"] == blobs
    assert "eval/fid" in run.data.metrics and "eval/class_coverage" not in run.data.metrics
