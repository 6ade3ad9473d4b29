"""The maximum-likelihood baseline as a run: fitted at once, logged and registered as a GAN
run's generator is."""

import mlflow
import numpy as np


def runs(experiment="ganflow"):
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def test_gmm_mle_fits_ring8_and_registers_a_sampler(workdir, cli):
    result = cli("run", "--plugin", "gmm-mle", "-q")
    assert result.exit_code == 0, result.output
    (run,) = runs()
    m = run.data.metrics
    assert m["toy/modes_captured"] == 8 and m["toy/hq_fraction"] > 0.97
    # EM on the right family: held-out log-likelihood within 0.02 nats of P_data's own.
    assert abs(m["heldout_log_likelihood"] - m["heldout_log_likelihood_data"]) < 0.02
    assert run.data.params["fit_components"] == "8" and run.data.params["latent_dim"] == "3"
    assert "lr_g" not in run.data.params and "loss" not in run.data.params  # GAN-only settings
    assert run.data.tags["ganflow.objective"] == "maximum-likelihood"
    result = cli("sample", "models:/gmm-mle-generator@latest", "-n", "2000", "--npz",
                 "-o", "g.npz")
    assert result.exit_code == 0, result.output
    radius = np.linalg.norm(np.load(workdir / "g.npz")["samples"], axis=1)
    assert np.abs(radius - 2.0).max() < 0.2

    # Too few components for the data: the wrong family shows in the same metrics.
    assert cli("run", "--plugin", "gmm-mle", "--arch", "gmm:3", "--dataset", "grid25",
               "-q").exit_code == 0
    few = [r for r in runs() if r.data.params["arch"] == "gmm:3"][0]
    assert few.data.metrics["toy/modes_captured"] <= 3
    assert few.data.metrics["heldout_log_likelihood"] < few.data.metrics[
        "heldout_log_likelihood_data"] - 1.0
