"""The plugin tutorial's examples (docs/plugins.md) as a real package outside the repository:
built into a wheel by setuptools, found through its ``ganflow`` entry points, and used without
touching ganflow."""

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

import ganflow
from ganflow.data import training_pipeline
from ganflow.plugins import load_plugins
from ganflow.prepare import prepare
from ganflow.resolve import configure, resolve

from conftest import TINY

TUTORIAL = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()


def tutorial_block(language, heading):
    """The first ```language block in the tutorial's section that starts with ``heading``."""
    section = TUTORIAL[TUTORIAL.index(heading):]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


def build_wheel(folder: Path, out: Path) -> Path:
    """``pip wheel`` of a plugin project, offline: setuptools as installed, no dependencies."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(folder)], check=True, capture_output=True,
                   timeout=300)
    (wheel,) = out.glob("*.whl")
    return wheel


def test_the_readme_packaging_example_ships_only_its_module(tmp_path):
    project = tmp_path / "ganflow-pearson"
    (project / "notes").mkdir(parents=True)
    (project / "notes" / "__init__.py").write_text("")  # a folder that must not be shipped
    (project / "pyproject.toml").write_text(tutorial_block("toml", "## A loss on logits"))
    (project / "ganflow_pearson.py").write_text(tutorial_block("python", "## A loss on logits"))
    wheel = build_wheel(project, tmp_path / "dist")
    files = zipfile.ZipFile(wheel).namelist()
    assert [f for f in files if ".dist-info/" not in f] == ["ganflow_pearson.py"]
    entry_points = zipfile.ZipFile(wheel).read(
        "ganflow_pearson-0.1.0.dist-info/entry_points.txt").decode()
    assert "[ganflow]\npearson = ganflow_pearson" in entry_points


EXAMPLES = {
    "smooth": ("ganflow_smooth", "## A loss that sees the whole update"),
    "ragan": ("ganflow_ragan", "## A loss whose generator update reads real data"),
    "drift": ("ganflow_drift", "## A lazy regularizer"),
    "gsteps": ("ganflow_gsteps", "## A trainer"),
}


@pytest.fixture(scope="module")
def extras(tmp_path_factory):
    """The tutorial's step-API examples as one installed distribution, ``ganflow-extras``."""
    root = tmp_path_factory.mktemp("extras")
    project = root / "ganflow-extras"
    project.mkdir()
    for module, heading in EXAMPLES.values():
        (project / f"{module}.py").write_text(tutorial_block("python", heading))
    modules = ", ".join(f'"{module}"' for module, _ in EXAMPLES.values())
    entry_points = "\n".join(f'{name} = "{module}"' for name, (module, _) in EXAMPLES.items())
    (project / "pyproject.toml").write_text(
        f'[project]\nname = "ganflow-extras"\nversion = "1.0"\ndependencies = ["ganflow"]\n\n'
        f"[project.entry-points.ganflow]\n{entry_points}\n\n"
        f"[tool.setuptools]\npy-modules = [{modules}]\n\n"
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n')
    site = root / "site"
    zipfile.ZipFile(build_wheel(project, root / "dist")).extractall(site)
    sys.path.insert(0, str(site))
    yield site
    sys.path.remove(str(site))
    for module, _ in EXAMPLES.values():
        sys.modules.pop(module, None)


def test_entry_points_register_each_example_with_its_settings(extras, cli):
    listed = json.loads(cli("plugins", "--json").stdout)
    rows = {row["name"]: row for kind in listed.values() for row in kind}
    assert rows["smooth[:SETTINGS]"]["plugin"] == "smooth"
    assert rows["smooth[:SETTINGS]"]["settings"]["real_label"]["default"] == 0.9
    assert rows["ragan"]["plugin"] == "ragan"
    assert rows["drift[:SETTINGS]"]["settings"]["epsilon"]["type"] == "float"
    assert rows["gsteps[:SETTINGS]"]["plugin"] == "gsteps"


def test_the_smoothed_loss_matches_its_closed_form(extras):
    loss = load_plugins().component(load_plugins().losses, "smooth:real_label=0.8",
                                    "--loss").build()
    s = np.array([[1.0], [-2.0]], np.float32)
    f = np.array([[0.5], [0.0]], np.float32)
    softplus = lambda x: np.log1p(np.exp(x))  # noqa: E731
    expected = np.mean(0.8 * softplus(-s) + 0.2 * softplus(s)) + np.mean(softplus(f))
    assert float(loss.d_loss(ganflow.Step.from_logits(s, f))) == pytest.approx(expected, rel=1e-6)


def test_a_relativistic_loss_gets_real_data_in_the_generator_update(extras):
    plugins = load_plugins()
    config = configure(plugins, "dcgan", {
        "loss": "ragan", "d_steps": 2, "batch_size": 16, "eval_every": 0})
    prepared = prepare(resolve(config, plugins))
    assert prepared.per_step == 16 * 3 and prepared.gan.generator_uses_real
    assert prepared.steps_per_epoch == 1797 // 48
    history = prepared.gan.fit(training_pipeline(prepared.source, prepared.per_step, 0),
                               epochs=1, steps_per_epoch=2, verbose=0)
    # The loss's own metric, the recipe's R1, and no sigmoid quantities.
    assert set(history.history) == {"d_loss", "g_loss", "ra_gap", "reg/r1"}


def test_a_trainer_with_n_generator_updates(extras):
    plugins = load_plugins()
    config = configure(plugins, "dcgan", {
        "trainer": "gsteps:n=3", "d_steps": 2, "batch_size": 8, "eval_every": 0,
        "epochs": 1, "steps_per_epoch": 4, "lr_schedule": "linear"})
    gan = prepare(resolve(config, plugins)).gan
    gan.fit(training_pipeline(prepare(resolve(config, plugins)).source, 16, 0), epochs=1,
            steps_per_epoch=4, verbose=0)
    assert (int(gan.d_optimizer.iterations), int(gan.g_optimizer.iterations)) == (8, 12)
    # The generator's schedule spans its 12 updates: the rate has reached 0.
    assert float(gan.g_optimizer.learning_rate) == pytest.approx(0.0, abs=1e-12)


def test_all_of_them_in_one_run(extras, cli, workdir):
    result = cli("run", "--loss", "smooth:real_label=0.8", "--regularizer",
                 "drift:epsilon=0.01,every=2", "--trainer", "gsteps:n=2", *TINY)
    assert result.exit_code == 0, result.output
    (run,) = mlflow.search_runs(experiment_names=["ganflow"], output_format="list")
    params, tags = run.data.params, run.data.tags
    assert (params["loss.real_label"], params["trainer.n"]) == ("0.8", "2")
    assert (params["regularizer.drift.epsilon"], params["regularizer.drift.every"]) == ("0.01", "2")
    assert (tags["ganflow.plugin.loss"], tags["ganflow.plugin.trainer"],
            tags["ganflow.plugin.regularizer.drift"]) == ("smooth", "gsteps", "drift")
    # The drift penalty, epsilon E[D(x)^2], ran and was logged in every window.
    windows = MlflowClient().get_metric_history(run.info.run_id, "reg/drift")
    assert [m.step for m in windows] == [3, 6] and all(m.value > 0 for m in windows)
    assert "value" not in run.data.metrics
    assert "models:/dcgan-generator/1" in result.stdout
