"""End to end: toy runs and `ganflow theory`, as a user runs them."""

import json
import math

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from conftest import image_steps

TOY_TINY = ["--epochs", "2", "--steps-per-epoch", "5", "-q"]


def runs(experiment="ganflow"):
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def test_toy_run_logs_mode_metrics_and_plots_each_epoch(workdir, cli):
    result = cli("run", "--plugin", "toy", *TOY_TINY)
    assert result.exit_code == 0, result.output
    (run,) = runs()
    client = MlflowClient()
    history = client.get_metric_history(run.info.run_id, "toy/hq_fraction")
    assert [m.step for m in history] == [0, 5, 10]
    assert all(0 <= m.value <= 1 for m in history)
    modes = client.get_metric_history(run.info.run_id, "toy/modes_captured")
    assert all(m.value in range(9) for m in modes)
    assert {"toy/reverse_kl", "epoch/mean_d_loss"} <= set(run.data.metrics)
    assert "toy/jsd" not in run.data.metrics  # 2-D: no density estimate
    assert run.data.params["arch"] == "mlp:256,256,256/pack=2"
    assert run.data.params["ema"] == "0.999" and run.data.params["data_components"] == "8"
    assert image_steps(client, run.info.run_id) == [0, 5, 10]
    version = client.get_model_version("toy-generator", "1")
    assert version.tags["train.ema"] == "0.999"

    result = cli("sample", "models:/toy-generator@latest", "-n", "300", "--npz", "-o", "s.npz")
    assert result.exit_code == 0, result.output
    assert np.load(workdir / "s.npz")["samples"].shape == (300, 2)
    assert cli("sample", "models:/toy-generator@latest", "-o", "s.png").exit_code == 0
    assert (workdir / "s.png").stat().st_size > 1000


def test_toy1d_logs_the_jsd_to_the_data(workdir, cli):
    result = cli("run", "--plugin", "toy1d", "--dataset", "gauss1d:means=-1,1/stds=0.3",
                 *TOY_TINY)
    assert result.exit_code == 0, result.output
    (run,) = runs()
    assert 0 < run.data.metrics["toy/jsd"] <= math.log(2)
    assert json.loads(run.data.params["data_mixture"])["means"] == [-1.0, 1.0]


@pytest.mark.parametrize("args, message", [
    (["--arch", "mlp"], "architecture mlp needs points (shape (d,))"),
    (["--dataset", "ring8"], "architecture dcgan needs images"),
    (["--dataset", "gauss1d:means=1,2/stds=1,2,3"], "a mixture of 2 components needs 1 or 2 stds"),
    (["--arch", "gmm:x"], "--arch gmm:x: give the number of components"),
    (["--arch", "dcgan:3"], "--arch dcgan: architecture 'dcgan' has no setting '3'; its "
                            "settings: width, d_width, sn, sigma_grad, pack"),
    (["--arch", "dcgan:pack=2", "--conditional"], "--arch dcgan:pack=2 packs unlabelled images"),
    (["--ema", "1.5"], "--ema must be in (0, 1), e.g. 0.999, got 1.5"),
])
def test_bad_toy_input_is_one_line_and_exit_2(workdir, cli, args, message):
    result = cli("run", *args, "-q")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert message in lines[0]
    assert not (workdir / "mlflow.db").exists()


@pytest.mark.parametrize("pair, message", [
    (("means=0/stds=1", "means=0,1/stds=1/weights=1"),
     "--pair 1 P_G: a mixture of 2 components needs 2 weights, got [1.0]"),
    (("means=nan/stds=1", "means=0/stds=1"),
     "--pair 1 P_DATA: mixture means must be finite numbers, got [nan]"),
    (("means=1e30/stds=1e-30", "means=0/stds=1"),
     "--pair 1 P_DATA: mixture means must lie within +-10000, got 1e+30"),
    (("means=0/stds=1e-30", "means=0/stds=1"),
     "--pair 1 P_DATA: mixture stds must lie between 0.001 and 10000, got [1e-30]"),
])
def test_theory_rejects_a_bad_pair_in_one_line(workdir, cli, pair, message):
    result = cli("theory", "--pair", *pair)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: {message}"


@pytest.mark.slow
def test_theory_checks_the_three_claims_with_the_training_code(workdir, cli):
    # Half the default steps: the claims hold with the same margins (V - (-2 log 2 + 2 JSD)
    # within 0.003, |D - D*| 0.006), in half the time.
    result = cli("theory", "--json", "--output-dir", "th", "--steps", "1500",
                 "--curve-steps", "500")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    pairs = {p["name"]: p for p in out["pairs"]}
    assert list(pairs) == ["nearly disjoint", "one mode", "broad", "close", "identical"]
    assert pairs["identical"]["jsd"] == 0 and pairs["nearly disjoint"]["jsd"] > 0.69
    # b: the trained D's V equals -2 log 2 + 2 JSD for every pair.
    for p in pairs.values():
        assert abs(p["value"] - (-2 * math.log(2) + 2 * p["jsd"])) <= 0.02, p["name"]
    # a: D matches D* on the default pair.
    claims = out["claims"]
    assert claims["optimal_d"]["pair"] == "broad"
    assert claims["optimal_d"]["d_mean_abs_error"] <= 0.03
    # c: minimax's gradient vanishes where D rejects the fakes; non-saturating's does not.
    c = claims["non_saturating"]
    assert c["minimax_gradient"] == pytest.approx(0.01, abs=1e-4)
    assert c["non_saturating_gradient"] == pytest.approx(0.99, abs=1e-4)
    assert c["start_d_fake"] < 0.05
    assert c["start_minimax_gradient"] < 0.1 * c["start_non_saturating_gradient"]
    assert all(claim["holds"] for claim in claims.values())
    files = {p.name for p in (workdir / "th").iterdir()}
    assert files == {"theory.md", "optimal_d.png", "value_vs_jsd.png",
                     "generator_gradients.png", "training_curves.png", "results.json"}
    (run,) = runs("ganflow-theory")
    assert run.data.metrics["optimal_d/d_mean_abs_error"] == pytest.approx(
        claims["optimal_d"]["d_mean_abs_error"])
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    assert {"theory.md", "optimal_d.png", "results.json"} <= artifacts
