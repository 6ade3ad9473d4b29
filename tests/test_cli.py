import json
import subprocess
import sys
import textwrap

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from ganflow.devices import resolve_precision

from conftest import TINY, image_steps, write_plugin

THIRD_PARTY = textwrap.dedent('''
    import keras
    import numpy as np
    import ganflow

    def load_squares(options):
        """64 8x8 images, each a bright 3x3 square on black at its own place."""
        x = np.full((64, 8, 8, 1), -1.0, np.float32)
        for i in range(64):
            r, c = divmod(i % 36, 6)
            x[i, r:r + 3, c:c + 3] = 1.0
        return ganflow.DataSource.from_arrays(x)

    @ganflow.hookimpl
    def ganflow_register_datasets(register):
        register("squares", load_squares, "bright squares")

    class WrongSize:
        def build_generator(self, spec, latent_dim):
            return keras.Sequential([keras.Input((latent_dim,)), keras.layers.Dense(784),
                                     keras.layers.Reshape((28, 28, 1))])

        def build_discriminator(self, spec):
            return keras.Sequential([keras.Input(spec.shape), keras.layers.Flatten(),
                                     keras.layers.Dense(1)])

    @ganflow.hookimpl
    def ganflow_register_architectures(register):
        register("wrong-size", WrongSize())

    @ganflow.hookimpl
    def ganflow_register_recipes(register):
        register("tiny", {"arch": "dcgan", "dataset": "squares", "epochs": 1, "batch_size": 8,
                          "steps_per_epoch": 2, "latent_dim": 4})
''')


@pytest.fixture
def third_party(tmp_path):
    return write_plugin(tmp_path / "third_party.py", THIRD_PARTY)


def only_run():
    (run,) = mlflow.search_runs(experiment_names=["ganflow"], output_format="list")
    return run


def test_run_tracks_registers_and_samples_end_to_end(cli, workdir):
    result = cli("run", "--plugin", "dcgan", *TINY)
    assert result.exit_code == 0, result.output
    assert (workdir / "mlflow.db").exists()  # MLflow's default store, in the working directory

    run = only_run()
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["recipe"], params["dataset"], params["loss"]) == ("dcgan", "digits",
                                                                    "non-saturating")
    assert (params["epochs"], params["batch_size"], params["d_steps"]) == ("2", "16", "1")
    assert (params["data_shape"], params["data_size"]) == ("32x32x1", "1797")
    # The recipe's --precision auto: bfloat16 where the hardware has it, else float32.
    assert (params["precision"], params["dtype_policy"]) == ("auto", resolve_precision("auto"))

    client = MlflowClient()
    history = client.get_metric_history(run.info.run_id, "d_loss")
    assert [m.step for m in history] == [3, 6]  # stepped by generator updates
    epochs = client.get_metric_history(run.info.run_id, "epoch/mean_value")
    assert [m.step for m in epochs] == [3, 6]
    jsd = client.get_metric_history(run.info.run_id, "jsd_estimate")[-1].value
    value = client.get_metric_history(run.info.run_id, "value")[-1].value
    assert jsd == pytest.approx((value + 2 * np.log(2)) / 2, rel=1e-5)

    assert image_steps(client, run.info.run_id) == [0, 3, 6]  # before training, each epoch
    assert [a.path for a in client.list_artifacts(run.info.run_id)
            if a.path.endswith(".gif")] == ["samples.gif"]  # the grids over training
    local = workdir / "ganflow-runs" / run.info.run_id / "samples" / "epoch_0002.png"
    assert Image.open(local).size == (8 * 34 * 2 + 4, 8 * 34 * 2 + 4)  # 8x8 tiles, 2x scaled
    assert f"samples: ganflow-runs/{run.info.run_id}/samples/epoch_0002.png" in result.stdout
    final = client.get_metric_history(run.info.run_id, "epoch/mean_d_loss")[-1].value
    assert "final:   d_fake " in result.stdout and f"d_loss {final:.4f}" in result.stdout

    (version,) = client.search_model_versions("name='dcgan-generator'")
    assert version.run_id == run.info.run_id
    assert version.tags["train.loss"] == "non-saturating" and \
        version.tags["train.dataset"] == "digits"
    assert "models:/dcgan-generator/1" in result.stdout

    sampled = cli("sample", "models:/dcgan-generator@latest", "-n", "9", "--npz", "-o", "a.npz")
    assert sampled.exit_code == 0, sampled.output
    arrays = np.load(workdir / "a.npz")
    assert arrays["samples"].shape == (9, 32, 32, 1) and arrays["z"].shape == (9, 64)
    assert arrays["samples"].min() >= -1.0 and arrays["samples"].max() <= 1.0
    assert cli("sample", f"runs:/{run.info.run_id}/generator", "-n", "9", "--npz",
               "-o", "b.npz").exit_code == 0
    np.testing.assert_allclose(np.load(workdir / "b.npz")["samples"], arrays["samples"], atol=1e-6)

    code, line = bad(cli, "sample", "models:/dcgan-generator/1", "-n", "10000000", "--npz")
    assert code == 2 and line.startswith("Error: 10,000,000 samples of shape (32, 32, 1) need ")
    assert "more than half this machine's memory" in line and line.endswith("ask for fewer (-n)")
    assert bad(cli, "sample", "models:/dcgan-generator/1", "-n", "20000") == (
        2, "Error: -n 20,000: a picture shows at most 10,000 samples; write more with --npz")
    assert bad(cli, "sample", "models:/dcgan-generator/1", "--truncation", "0.7") == (
        2, "Error: --truncation 0.7: models:/dcgan-generator/1 has no mean latent to truncate "
           "towards (a stylegan2 generator has)")
    assert bad(cli, "sample", "models:/dcgan-generator/1", "-o", "a.npz/grid.png") == (
        2, "Error: -o a.npz: a.npz is a file, not a folder")
    grid = cli("sample", "models:/dcgan-generator/1", "-n", "6", "-o", "grid.png")
    assert grid.stdout == "Wrote 6 samples of shape (32, 32, 1) to grid.png\n"  # no progress bar
    assert Image.open(workdir / "grid.png").size == (3 * 34 * 2 + 4, 2 * 34 * 2 + 4)


def test_second_run_becomes_latest_version(cli, workdir):
    for _ in range(2):
        assert cli("run", *TINY, "--epochs", "1").exit_code == 0
    latest = MlflowClient().get_model_version_by_alias("dcgan-generator", "latest")
    assert int(latest.version) == 2


def test_third_party_dataset_architecture_and_recipe(cli, workdir, third_party):
    listed = json.loads(cli("plugins", "--plugin-module", third_party, "--json").stdout)
    assert {"name": "squares", "plugin": third_party, "description": "bright squares"} in listed[
        "datasets"]
    result = cli("run", "--plugin-module", third_party, "--plugin", "tiny", "--no-register", "-q")
    assert result.exit_code == 0, result.output
    params = only_run().data.params
    assert (params["recipe"], params["dataset"], params["data_shape"]) == ("tiny", "squares",
                                                                           "8x8x1")
    assert params["plugin_modules"] == third_party
    assert "(not registered)" in result.stdout


def test_config_file_sits_between_recipe_and_flags(cli, workdir, third_party):
    (workdir / "settings.yaml").write_text("batch_size: 4\nseed: 7\nlatent-dim: 3\n")
    result = cli("run", "--plugin-module", third_party, "--plugin", "tiny", "--no-register",
                 "--config", "settings.yaml", "--seed", "9", "-q")
    assert result.exit_code == 0, result.output
    params = only_run().data.params
    assert (params["batch_size"], params["latent_dim"], params["seed"]) == ("4", "3", "9")
    assert params["epochs"] == "1"  # the recipe's


def bad(cli, *args):
    result = cli(*args)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return result.exit_code, lines[0]


@pytest.mark.parametrize("args, message", [
    (["--plugin", "dcgn"], "unknown recipe 'dcgn'; known: biggan, cdcgan, dcgan, gmm-mle, sngan, "
                           "stacked, stylegan2, toy, toy-grid, toy1d (did you mean 'dcgan'?)"),
    (["--loss", "minmax"], "unknown loss 'minmax'; known: hinge, lsgan, minimax, "
                           "non-saturating, rpgan, wgan (did you mean 'minimax'?)"),
    (["--dataset", "digit"], "unknown dataset 'digit'; known: digits, folder, gauss1d, grid25, "
                             "prepared, ring8, stacked-digits, stacked-mnist, tfds "
                             "(did you mean 'digits'?)"),
    (["--arch", "dcgn"], "unknown architecture 'dcgn'; known: dcgan, gmm, mlp, resnet, "
                         "stylegan2 (did you mean 'dcgan'?)"),
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--d-steps", "0"], "--d-steps must be at least 1, got 0"),
    (["--tracking-timeout", "0"], "--tracking-timeout must be at least 1, got 0.0"),
    (["--lr-g", "-1"], "--lr-g must be a positive number, got -1.0"),
    (["--batch-size", "1000", "--d-steps", "2"],
     "one training step needs batch-size x 2 updates = 1000 x 2 = 2000 real examples, but "
     "the dataset has only 1797: lower --batch-size"),
    (["--dataset", "tfds"], "dataset 'tfds' needs an argument: --dataset tfds:NAME"),
    (["--steps-per-epoch", "5", "--batch-size", "1000", "--d-steps", "2"],
     "one training step needs batch-size x 2 updates = 1000 x 2 = 2000 real examples, but the "
     "dataset has only 1797: lower --batch-size"),
    (["--config", "nope.yaml"], "--config nope.yaml: no such file"),
    (["--experiment", ""], "--experiment must be a name, got an empty one"),
    (["--latent-dim", "100000000"], "--latent-dim must be at most 100,000, got 100,000,000"),
    (["--image-size", "100000"], "--image-size must be at most 4,096, got 100,000"),
    (["--samples", "100000000"], "--samples must be at most 10,000, got 100,000,000"),
    (["--registered-model", "bad/name:1"], "--registered-model 'bad/name:1': a model name must "
                                           "not be empty or contain '/' or ':'"),
    (["--tracking-uri", "foo://bar"], "tracking URI foo://bar: MLflow cannot store runs at a "
                                      "foo:// URI; use a path, sqlite:///FILE or "
                                      "http://HOST:PORT"),
    (["--output-dir", "README"], "--output-dir README: README is a file, not a folder"),
    (["--config", "binary.yaml"], "--config binary.yaml: cannot read it as text "
                                  "(UnicodeDecodeError): give a JSON or YAML file"),
    (["--seed", "4294967296"], "--seed must be at most 4,294,967,295, got 4,294,967,296"),
    (["--tracking-timeout", "nan"], "--tracking-timeout must be a finite number, got nan"),
    (["--optimizer", "adam:beta1=2"], "--optimizer adam: optimizer 'adam' setting beta1 must be "
                                      "below 1, got 2.0"),
    (["--optimizer", "sgd:momentum=1"], "--optimizer sgd: optimizer 'sgd' setting momentum must "
                                        "be below 1, got 1.0"),
    (["--augment", "translation:ratio=2"], "--augment translation: augmentation 'translation' "
                                           "setting ratio must be at most 1, got 2.0"),
    (["--data-fraction", "1.5"], "--data-fraction must be in (0, 1], e.g. 0.1, got 1.5"),
    (["--data-fraction", "0.0001"], "--data-fraction 0.0001 of 1797 examples keeps none: give a "
                                    "larger fraction"),
    (["--augment", "ada:pipe=spin"], "--augment ada: pipe 'spin': no operation spin; the pipes "
                                     "are blit, geom, color, bg, bgc, the operations xflip, "
                                     "rotate90, xint, scale, rotate, aniso, xfrac, brightness, "
                                     "contrast, lumaflip, hue, saturation"),
])
def test_bad_input_is_one_line_exit_2_and_starts_nothing(cli, workdir, args, message):
    (workdir / "README").write_text("a file where a folder should be\n")
    (workdir / "binary.yaml").write_bytes(bytes(range(256)))
    assert bad(cli, "run", *args) == (2, f"Error: {message}")
    assert not (workdir / "mlflow.db").exists() and not (workdir / "ganflow-runs").exists()


@pytest.mark.parametrize("command", [["theory"], ["sample", "models:/m@latest"],
                                     ["evaluate", "models:/m@latest"]])
def test_a_seed_past_32_bits_is_refused_by_every_command(cli, workdir, command):
    result = cli(*command, "--seed", str(2**32))
    assert result.exit_code == 2
    assert "Invalid value for '--seed': 4294967296 is not in the range 0<=x<=4294967295" in \
        result.stderr


def test_a_tracking_server_that_does_not_answer_is_one_line_exit_75(cli, workdir):
    # Not a mistake in what was typed, maybe: a server not started yet ("try again later").
    assert bad(cli, "run", "--tracking-uri", "http://127.0.0.1:9") == (
        75, "Error: tracking server http://127.0.0.1:9 does not answer: start it (mlflow server "
            "--host 127.0.0.1 --port PORT) or check --tracking-uri")
    assert not (workdir / "mlflow.db").exists() and not (workdir / "ganflow-runs").exists()


def test_shape_mismatch_names_both_shapes(cli, workdir, third_party):
    code, line = bad(cli, "run", "--plugin-module", third_party, "--arch", "wrong-size")
    assert code == 2
    assert line == ("Error: architecture wrong-size's generator makes examples of shape "
                    "(28, 28, 1), but dataset digits has examples of shape (32, 32, 1)")


def test_plugin_that_fails_to_import_is_named(cli, workdir, tmp_path):
    broken = write_plugin(tmp_path / "broken.py", "raise ImportError('needs torch')\n")
    code, line = bad(cli, "run", "--plugin-module", broken)
    assert code == 1
    assert line == f"Error: plugin module '{broken}' failed to import: ImportError: needs torch"


def test_sampling_without_a_store_or_model_is_one_line(cli, workdir):
    code, line = bad(cli, "sample", "models:/dcgan-generator@latest")
    assert code == 2
    assert line == (f"Error: no MLflow store at sqlite:///{workdir}/mlflow.db: run this where you trained, "
                    "or pass --tracking-uri")
    assert not (workdir / "mlflow.db").exists()

    code, line = bad(cli, "sample", "models:/dcgan-generator@latest", "-o", "out.txt")
    assert (code, line) == (2, "Error: -o out.txt: a picture is written as .png, .jpg, .jpeg, "
                               ".webp; raw arrays with --npz")

    MlflowClient().search_experiments()  # creates the store
    code, line = bad(cli, "sample", "models:/nothing-here@latest")
    assert code == 2
    assert line == ("Error: cannot load models:/nothing-here@latest: "
                    "Registered Model with name=nothing-here not found")


def test_click_type_errors_exit_2(cli, workdir):
    result = cli("run", "--epochs", "many")
    assert result.exit_code == 2 and "'many' is not a valid integer" in result.stderr


def test_console_script_in_a_real_process(workdir):
    # The installed entry point, as a user's shell runs it: one line, exit 2, no TF chatter.
    proc = subprocess.run([sys.executable, "-m", "ganflow", "run", "--loss", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "Error: unknown loss 'nope'; known: hinge, lsgan, minimax, non-saturating, rpgan, wgan"
    ]


INTERRUPTING = '''
import ganflow
from ganflow_plugins.losses import NonSaturatingLoss

class Interrupting(NonSaturatingLoss):
    def g_loss(self, step):
        if step.training:  # not in the check before training: in the training step itself
            raise KeyboardInterrupt  # as Ctrl-C during training would
        return super().g_loss(step)

@ganflow.hookimpl
def ganflow_register_losses(register):
    register("interrupting", Interrupting())
'''


@pytest.mark.slow
def test_ctrl_c_keeps_the_work_and_marks_the_run_killed(cli, workdir, tmp_path):
    plugin = write_plugin(tmp_path / "interrupting.py", INTERRUPTING)
    result = cli("run", "--plugin-module", plugin, "--loss", "interrupting", *TINY)
    assert result.exit_code == 130
    run = only_run()
    assert run.info.status == "KILLED" and run.data.tags["ganflow.interrupted"] == "SIGINT"
    assert run.data.tags["ganflow.stopped_at_step"] == "0"  # during the first step
    assert f"resume:  ganflow resume {run.info.run_id}" in result.stdout
    client = MlflowClient()
    assert image_steps(client, run.info.run_id) == [0]
    assert client.list_artifacts(run.info.run_id, "generator")  # logged ...
    assert client.search_registered_models() == []  # ... but not registered
    assert "interrupted" in result.stdout


# The pickled model this test logs has no input example, which MLflow asks for.
@pytest.mark.filterwarnings("ignore:.*An input example was not provided:UserWarning")
def test_sample_refuses_models_whose_loading_runs_unchecked_code(cli, workdir):
    import keras
    import numpy as np
    from mlflow.models import infer_signature

    marker = workdir / "ran.txt"

    class WritesWhenLoaded(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            marker.write_text("code ran")

        def predict(self, context, model_input: list[list[float]]):  # MLflow asks for hints
            return model_input

    z = np.zeros((2, 4), np.float32)
    signature = infer_signature(z, z[:, :2])
    lambda_model = keras.Model(inputs := keras.Input((4,)),
                               keras.layers.Lambda(lambda t: t[:, :2] * 2)(inputs))
    # Requirements named, not inferred: MLflow infers them by loading each model in a Python
    # process of its own, which imports TensorFlow (this test: 60 s with that, 3 s without).
    logged = {"signature": signature, "pip_requirements": ["keras"]}
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    try:
        with mlflow.start_run():
            uris = {
                "lambda": mlflow.keras.log_model(lambda_model, name="g1", **logged).model_uri,
                "exported": mlflow.keras.log_model(
                    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), name="g2",
                    save_exported_model=True, **logged).model_uri,
                "pickled": mlflow.pyfunc.log_model(name="g3", python_model=WritesWhenLoaded(),
                                                   **logged).model_uri,
            }
    finally:
        mlflow.set_tracking_uri(None)
    marker.unlink(missing_ok=True)  # MLflow loads a Python model once as it logs it

    def refusal(uri):
        result = cli("sample", uri, "-n", "4", "-o", "s.png")
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, result.output
        return lines[0]

    assert refusal(uris["lambda"]) == (
        f"Error: cannot load {uris['lambda']}: it holds Python code (e.g. a Lambda layer's "
        "function), which Keras's safe mode refuses to run and ganflow does not load; load it "
        "yourself with safe_mode=False only if you trust who made it")
    assert "it is an exported TensorFlow SavedModel, and loading it would run code" in \
        refusal(uris["exported"])
    assert "it is a mlflow.pyfunc.model model" in refusal(uris["pickled"])
    assert not marker.exists() and not (workdir / "s.png").exists()


def test_progress_is_a_line_per_epoch_when_stdout_is_not_a_terminal(cli, workdir):
    # Keras's bar redraws itself with carriage returns (800 KB of them for one default run
    # into a log file); off a terminal, each epoch gets one line instead.
    args = [a for a in TINY if a != "-q"]
    piped = cli("run", *args, "--no-register", "--eval-every", "0")
    assert piped.exit_code == 0, piped.output
    assert "\r" not in piped.stdout and "\x08" not in piped.stdout
    assert [line.split()[0] for line in piped.stdout.splitlines() if line.startswith("3/3")] \
        == ["3/3", "3/3"]  # Keras's end-of-epoch line, once per epoch
    forced = cli("run", *args, "--no-register", "--eval-every", "0", "--verbose")
    assert forced.exit_code == 0 and "\r" in forced.stdout  # the bar, as asked


def test_every_boolean_setting_has_a_dashed_negative_flag(cli):
    from ganflow.config import FIELDS, flag, kind_of

    shown = cli("run", "--help").stdout
    for name in FIELDS:
        if kind_of(name) == "bool" and FIELDS[name].metadata["flag"]:
            assert f"{flag(name)} / --no-{flag(name)[2:]}" in shown, name
    assert "--no-checkpoint-to-mlflow" in shown and "_" not in shown.split("--no-")[-1][:30]
