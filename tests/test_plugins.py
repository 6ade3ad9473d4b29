import inspect
import json
import re
import textwrap
from pathlib import Path

import mlflow
import pytest

import ganflow
from ganflow import hookspecs
from ganflow.errors import PluginError, UsageError
from ganflow.plugins import DEFAULT_PLUGINS, load_plugins

from conftest import TINY, write_plugin

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = (ROOT / "docs" / "plugins.md").read_text()  # "Writing plugins"


def tutorial_block(language, after):
    """The first ```language block after the heading `after` in the plugin tutorial."""
    section = TUTORIAL[TUTORIAL.index(after):]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def pearson_installed(tmp_path, monkeypatch):
    """The tutorial's example plugin, installed as a distribution with a `ganflow` entry point."""
    (tmp_path / "ganflow_pearson.py").write_text(tutorial_block("python", "## A loss on logits"))
    toml = tutorial_block("toml", "## A loss on logits")
    entry = re.search(r"\[project.entry-points.ganflow\]\n(\w+) = \"(\w+)\"", toml)
    dist = tmp_path / "ganflow_pearson-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ganflow-pearson\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(f"[ganflow]\n{entry.group(1)} = {entry.group(2)}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return entry.group(1)


def test_builtins_are_registered_by_their_modules(plugins):
    assert {e.name: e.plugin for e in plugins.losses} == {
        name: "ganflow_plugins.losses"
        for name in ("hinge", "lsgan", "minimax", "non-saturating", "rpgan", "wgan")
    }
    assert {e.name: e.plugin for e in plugins.regularizers} == {
        **{name: "ganflow_plugins.regularizers" for name in ("gp", "orthogonal", "r1", "r2")},
        "pl": "ganflow_plugins.stylegan2",
    }
    assert {e.name: e.plugin for e in plugins.recipes} == {
        "dcgan": "ganflow_plugins.dcgan", "cdcgan": "ganflow_plugins.dcgan",
        "gmm-mle": "ganflow_plugins.gmm",
        "toy": "ganflow_plugins.toy", "toy1d": "ganflow_plugins.toy",
        "toy-grid": "ganflow_plugins.toy",
        "sngan": "ganflow_plugins.resnet", "biggan": "ganflow_plugins.resnet",
        "stylegan2": "ganflow_plugins.stylegan2", "stacked": "ganflow_plugins.stacked",
    }
    assert {e.name: e.usage for e in plugins.datasets} == {
        "digits": "digits", "folder": "folder:PATH", "tfds": "tfds:NAME",
        "prepared": "prepared:PATH", "stacked-digits": "stacked-digits[:N]",
        "stacked-mnist": "stacked-mnist[:N]",
        "gauss1d": "gauss1d[:MIXTURE]", "ring8": "ring8", "grid25": "grid25",
    }
    assert {e.name: e.usage for e in plugins.architectures} == {
        "dcgan": "dcgan[:SETTINGS]", "mlp": "mlp[:SIZES]", "gmm": "gmm[:K]",
        "resnet": "resnet[:SETTINGS]", "stylegan2": "stylegan2[:SETTINGS]",
    }
    assert [p for p in DEFAULT_PLUGINS if not plugins.pm.has_plugin(p)] == []


def test_unknown_name_lists_known_names_and_closest_match(plugins):
    with pytest.raises(UsageError) as err:
        plugins.losses.get("non-saturatng")
    assert str(err.value) == (
        "unknown loss 'non-saturatng'; known: hinge, lsgan, minimax, non-saturating, rpgan, wgan "
        "(did you mean 'non-saturating'?)"
    )


def test_dataset_argument_is_required_or_refused(plugins):
    entry, argument = plugins.dataset("tfds:mnist")
    assert (entry.name, argument) == ("tfds", "mnist")
    with pytest.raises(UsageError, match=r"needs an argument: --dataset tfds:NAME"):
        plugins.dataset("tfds")
    with pytest.raises(UsageError, match="takes no argument"):
        plugins.dataset("digits:8")


def test_entry_point_plugin_is_listed_and_used_by_run(pearson_installed, cli, workdir):
    listed = cli("plugins", "--json")
    assert listed.exit_code == 0
    losses = {row["name"]: row["plugin"] for row in json.loads(listed.stdout)["losses"]}
    assert losses["pearson"] == pearson_installed

    result = cli("run", "--loss", "pearson", "--no-register", *TINY)
    assert result.exit_code == 0, result.output
    (run,) = mlflow.search_runs(experiment_names=["ganflow"], output_format="list")
    assert run.data.params["loss"] == "pearson"
    assert run.data.tags["ganflow.plugin.loss"] == "pearson"
    assert "d_loss" in run.data.metrics


def test_readme_loss_matches_its_closed_form(pearson_installed):
    import numpy as np

    loss = load_plugins().losses.get("pearson").obj
    real, fake = np.array([[2.0], [0.0]], np.float32), np.array([[1.0], [-1.0]], np.float32)
    # 0.5 (E[(s_real - 1)^2] + E[(s_fake + 1)^2]) and 0.5 E[s_fake^2]
    assert float(loss.discriminator_loss(real, fake)) == pytest.approx(0.5 * (1.0 + 2.0))
    assert float(loss.generator_loss(fake)) == pytest.approx(0.5 * 1.0)


@pytest.fixture
def broken_installed(tmp_path, monkeypatch):
    """An installed plugin package whose module fails to import."""
    (tmp_path / "ganflow_broken.py").write_text("import no_such_module_anywhere\n")
    dist = tmp_path / "ganflow_broken-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ganflow-broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[ganflow]\nbroken = ganflow_broken\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "broken"


def test_entry_point_that_fails_to_import_is_named(broken_installed):
    with pytest.raises(PluginError) as err:
        load_plugins()
    assert "plugin 'broken' (entry point ganflow_broken) failed to import" in str(err.value)
    assert "no_such_module_anywhere" in str(err.value)
    assert str(err.value).endswith("; switch it off with --disable-plugin broken")


def test_a_broken_plugin_switched_off_lets_work_go_on(broken_installed, cli, workdir, monkeypatch,
                                                      tmp_path):
    assert cli("plugins").exit_code == 1
    listed = cli("plugins", "--disable-plugin", broken_installed, "--json")
    assert listed.exit_code == 0 and "minimax" in listed.stdout
    # Without autoload every installed package's entry points are skipped (never imported);
    # the built-ins and --plugin-module stay.
    monkeypatch.setenv("GANFLOW_DISABLE_PLUGIN_AUTOLOAD", "1")
    path = write_plugin(tmp_path / "mine.py", DUPLICATE.replace('"minimax"', '"mine"'))
    listed = cli("plugins", "--plugin-module", path, "--json")
    assert listed.exit_code == 0
    # An entry point may still be named, though not loaded.
    assert cli("plugins", "--disable-plugin", broken_installed).exit_code == 0
    losses = {row["name"]: row["plugin"] for row in json.loads(listed.stdout)["losses"]}
    assert losses["mine"] == path and losses["minimax"] == "ganflow_plugins.losses"
    result = cli("run", "--plugin", "toy", "--epochs", "1", "--steps-per-epoch", "2",
                 "--no-register", "-q")
    assert result.exit_code == 0, result.output


def test_a_built_in_recipe_whose_parts_are_switched_off_goes_with_them(cli, workdir):
    listed = cli("plugins", "--disable-plugin", "ganflow_plugins.regularizers", "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [row["name"] for row in rows["regularizers"]] == ["pl[:SETTINGS]"]  # stylegan2's
    # dcgan, cdcgan, stylegan2 and toy-grid use R1, biggan the orthogonal regularizer; the
    # others stay.
    assert [row["name"] for row in rows["recipes"]] == ["gmm-mle", "sngan", "toy", "toy1d"]
    result = cli("run", "--disable-plugin", "ganflow_plugins.regularizers", "-q")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: recipe 'dcgan' is switched off: it uses regularizer 'r1', from "
        "ganflow_plugins.regularizers, which is switched off (--disable-plugin)")


def test_a_recipe_s_own_mistake_is_still_one_when_plugins_are_switched_off(tmp_path):
    path = write_plugin(tmp_path / "typo.py", textwrap.dedent("""
        import ganflow

        @ganflow.hookimpl
        def ganflow_register_recipes(register):
            register("typo", {"loss": "non-saturatin"})
    """))
    with pytest.raises(PluginError, match=rf"^plugin {path}: recipe typo: unknown loss "
                                          r"'non-saturatin'"):
        load_plugins((path,), disable=("ganflow_plugins.gmm",))


def test_plugins_switched_off_in_a_config_file_and_mistakes_about_them(cli, workdir):
    (workdir / "settings.yaml").write_text("disable_plugins: [ganflow_plugins.augment]\n")
    result = cli("run", "--plugin", "toy", "--config", "settings.yaml", "--augment", "color",
                 "-q")
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: unknown augmentation 'color'; known: ada"
    result = cli("plugins", "--disable-plugin", "ganflow_plugins.lossess")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: --disable-plugin ganflow_plugins.lossess: no plugin "
                                    "of that name (did you mean 'ganflow_plugins.losses'?); the "
                                    "plugins are: ganflow_plugins.losses, ")


DUPLICATE = """
import ganflow
from ganflow_plugins.losses import MinimaxLoss

@ganflow.hookimpl
def ganflow_register_losses(register):
    register("minimax", MinimaxLoss())
"""


def test_duplicate_name_names_both_plugins(tmp_path):
    path = write_plugin(tmp_path / "dup.py", DUPLICATE)
    with pytest.raises(PluginError) as err:
        load_plugins((path,))
    assert str(err.value) == (
        f"loss 'minimax' is registered by two plugins, ganflow_plugins.losses and {path}: "
        "uninstall one of them or rename its loss"
    )


def test_misspelled_hook_is_refused(tmp_path):
    path = write_plugin(tmp_path / "typo.py", textwrap.dedent("""
        import ganflow

        @ganflow.hookimpl
        def ganflow_register_loss(register):
            pass
    """))
    with pytest.raises(PluginError, match="ganflow_register_loss"):
        load_plugins((path,))


def test_plugin_module_by_import_name_and_bad_names(tmp_path, monkeypatch):
    write_plugin(tmp_path / "my_local_losses.py", DUPLICATE.replace('"minimax"', '"mine"'))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "mine" in load_plugins(("my_local_losses",)).losses
    with pytest.raises(PluginError, match="plugin module 'not_a_module_x' failed to import"):
        load_plugins(("not_a_module_x",))
    with pytest.raises(UsageError, match="no such file"):
        load_plugins((str(tmp_path / "missing.py"),))


def test_a_failing_registration_names_its_plugin(tmp_path):
    path = write_plugin(tmp_path / "raises.py", textwrap.dedent("""
        import ganflow

        @ganflow.hookimpl
        def ganflow_register_recipes(register):
            raise RuntimeError("boom")
    """))
    with pytest.raises(PluginError, match=r"plugin .*raises.py failed in ganflow_register_recipes: "
                                          r"RuntimeError: boom"):
        load_plugins((path,))


HOOKS = [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction)
         if name.startswith("ganflow_")]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_and_tested(hook):
    # As datasette does: the plugin API stays honest by construction. A test file must
    # implement the hook (a mention, or a definition only in the docs, does not count), and
    # the docs' table of hooks must give the register callback its docstring gives.
    doc = inspect.getdoc(getattr(hookspecs, hook))
    call = re.match(r"Register [^:]+: ``(register\(.*?\))``", " ".join(doc.split()))
    assert call, f"{hook}'s docstring does not start with its register callback"
    assert f"| `{hook}(register)` | `{call.group(1)}` |" in TUTORIAL, \
        f"docs/plugins.md's table does not give {hook} as its docstring does"
    tests = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py")
                    if p.name != "test_plugins.py")
    assert f"def {hook}(" in tests, f"no test implements {hook}"


def test_public_api():
    assert {"GAN", "hookimpl", "Loss", "DataSource", "DataSpec", "DatasetOptions",
            "UsageError", "PluginError", "GanflowError"} <= set(dir(ganflow)) | {"GAN"}
    assert ganflow.GAN.__name__ == "GAN"
