"""`ganflow resume`: a run's settings back from its MLflow run, each from the layer that set it,
and one resuming process per run."""

import mlflow
import pytest

from ganflow import resume, tracking
from ganflow.config import recipe_layer, resolve, user_layers
from ganflow.errors import UsageError


def started(workdir, status="FINISHED", **flags):
    """A finished ganflow run of the toy recipe with ``flags``, as the store holds it."""
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    config = resolve(recipe_layer("toy", {"epochs": 4, "precision": "auto"}),
                     *user_layers(None, flags))
    with tracking.start_run(config, {"dtype_policy": "mixed_bfloat16"}, {}) as run:
        pass
    if status != "FINISHED":
        mlflow.MlflowClient().set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_a_resumed_run_keeps_its_settings_and_where_each_came_from(workdir):
    run_id = started(workdir, status="KILLED", seed=7)
    config = resume.resume_config(run_id, {"epochs": None, "lr_g": 1e-3, "tracking_uri": None})
    assert (config.epochs, config.seed, config.lr_g) == (4, 7, 1e-3)
    assert config.set_by("epochs") == "recipe toy" and config.from_recipe("epochs")
    assert config.set_by("seed") == "flags"
    assert config.set_by("lr_g") == "ganflow resume"
    # `auto` stays what it resolved to when the run started, whatever this machine has.
    assert config.precision == "mixed_bfloat16"


def test_a_finished_run_resumes_only_to_train_longer(workdir):
    run_id = started(workdir)
    with pytest.raises(UsageError, match=rf"^run {run_id} finished its 4 epochs: to train it "
                                         r"longer, pass --epochs N with N > 4$"):
        resume.resume_config(run_id, {"epochs": 4})
    assert resume.resume_config(run_id, {"epochs": 6}).epochs == 6
    with pytest.raises(UsageError, match=r"^no run nope in sqlite:///"):
        resume.resume_config("nope", {})


def test_one_process_at_a_time_resumes_a_run(workdir):
    with resume.hold(str(workdir), "abc"):
        with pytest.raises(UsageError, match=r"^run abc is being resumed by another process "
                                             r"already: wait for it to finish"):
            with resume.hold(str(workdir), "abc"):
                pass
    with resume.hold(str(workdir), "abc"):  # released
        pass
    with resume.hold(str(workdir), None):  # a new run holds nothing
        pass
