"""run(config): resolve -> prepare -> fit -> register, as one call, and what it reports."""

import json

from mlflow import MlflowClient

from ganflow.config import user_layers
from ganflow.resolve import configure
from ganflow.runner import run


def test_a_run_goes_from_its_settings_to_a_registered_generator(plugins, workdir):
    config = configure(plugins, "toy", given=user_layers(None, {
        "epochs": 2, "steps_per_epoch": 3, "eval_every": 1, "eval_samples": 100,
        "tracking_uri": f"sqlite:///{workdir}/mlflow.db"}))
    lines = []
    result = run(config, plugins, verbose=0, report=lines.append)
    assert result.steps_done == 6 and not result.interrupted and result.worker is None
    assert (result.model_name, result.model_version) == ("toy-generator", 1)
    assert result.model_uri == "models:/toy-generator/1" and result.champion.is_new
    assert result.checkpoint == workdir / "ganflow-runs" / result.run_id / "checkpoints" / "ckpt-6"
    assert result.samples_path.name == "epoch_0002.png" and result.samples_path.exists()
    assert {"d_loss", "eval/fid", "toy/modes_captured"} <= set(result.metrics)
    assert [line.split(":")[0] for line in lines] == [
        "evaluation after epoch 0", "evaluation after epoch 1", "evaluation after epoch 2"]

    logged = MlflowClient().get_run(result.run_id)
    params, tags = logged.data.params, logged.data.tags
    # Every setting, every plugin's setting, the data, and what evaluations measure with.
    assert params["epochs"] == "2" and params["g_optimizer.beta1"] == "0.5"
    assert params["data_size"] == "25600" and params["eval_features"] == "raw"
    assert tags["ganflow.plugin.features"] == "ganflow_plugins.features"
    assert json.loads(tags["ganflow.origins"])["arch"] == "recipe toy"
    assert (logged.info.status, result.experiment) == ("FINISHED", "ganflow")


def test_an_unwritable_output_folder_or_store_stops_the_run_before_the_data_loads(
        plugins, workdir, monkeypatch):
    import pytest

    from ganflow import prepare as preparing
    from ganflow.errors import UsageError

    monkeypatch.setattr(preparing, "load_source", lambda resolved: pytest.fail("loaded"))
    (workdir / "taken").write_text("")
    with pytest.raises(UsageError, match=r"^--output-dir taken/runs: taken is a file, not a "
                                         r"folder$"):
        run(configure(plugins, "toy", {"output_dir": "taken/runs"}), plugins, verbose=0)
    with pytest.raises(UsageError, match=r"^tracking URI ftp://x: MLflow cannot store runs"):
        run(configure(plugins, "toy", {"tracking_uri": "ftp://x"}), plugins, verbose=0)
