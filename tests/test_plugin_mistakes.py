"""A plugin author's mistakes, made as one would make them: each is one line that names the
plugin and says what to do, never a traceback (``ganflow --debug`` shows one)."""

import textwrap

import mlflow
import pytest

from ganflow.errors import PluginError
from ganflow.plugins import load_plugins

from conftest import TINY, write_plugin


def one_line(result):
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return result.exit_code, lines[0].removeprefix("Error: ")


def plugin(tmp_path, source, name="mine.py"):
    return write_plugin(tmp_path / name, textwrap.dedent(source))


LOSS = """
    import ganflow
    from keras import ops

    class Mine(ganflow.Loss):
        def discriminator_loss(self, real_logits, fake_logits):
            return ops.mean(ops.softplus(-real_logits)) + ops.mean(ops.softplus(fake_logits))

        def generator_loss(self, fake_logits):
            return ops.mean(ops.softplus(-fake_logits))

    @ganflow.hookimpl
    def ganflow_register_losses(register):
        register("mine", Mine())
"""


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """``ganflow_mine`` installed as a distribution with a ``ganflow`` entry point."""
    (tmp_path / "ganflow_mine.py").write_text(textwrap.dedent(LOSS))
    dist = tmp_path / "ganflow_mine-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ganflow-mine\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[ganflow]\nmine = ganflow_mine\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path / "ganflow_mine.py"


def test_a_module_loaded_twice_is_loaded_once(installed, tmp_path):
    # Installed and given by name, installed and given by path, a path given twice.
    for modules in (("ganflow_mine",), (str(installed),), (str(installed), str(installed))):
        assert load_plugins(modules).losses.get("mine").plugin == "mine"
    # A copy elsewhere is another module: its names do clash, and the error says with whom.
    copy = plugin(tmp_path, LOSS, "elsewhere.py")
    with pytest.raises(PluginError, match=f"registered by two plugins, mine and {copy}"):
        load_plugins((copy,))


def test_the_same_file_twice_by_path(tmp_path):
    path = plugin(tmp_path / "", LOSS.replace('"mine"', '"only"'), "only.py")
    loaded = load_plugins((path, str(tmp_path / "." / "only.py")))
    assert loaded.losses.get("only").plugin == path


VECTOR = """
    import ganflow
    from keras import ops

    class Vector(ganflow.Loss):
        def discriminator_loss(self, real_logits, fake_logits):
            return ops.softplus(-real_logits) + ops.softplus(fake_logits)

        def generator_loss(self, fake_logits):
            return ops.mean(ops.softplus(-fake_logits))

    @ganflow.hookimpl
    def ganflow_register_losses(register):
        register("vector", Vector())
"""


def test_a_loss_that_returns_a_vector_is_stopped_before_training(cli, workdir, tmp_path):
    path = plugin(tmp_path, VECTOR)
    code, line = one_line(cli("run", "--plugin-module", path, "--loss", "vector", *TINY))
    assert code == 1
    assert line == (f"plugin {path}: loss 'vector': Vector: d_loss returned shape (2, 1) on a "
                    "batch of 2, not a scalar: reduce it, e.g. with ops.mean (the gradient of a "
                    "vector is that of its sum, which grows with the batch size)")
    assert not (workdir / "mlflow.db").exists()


def test_an_object_without_loss_methods_is_refused_when_it_registers(tmp_path):
    path = plugin(tmp_path, """
        import ganflow

        @ganflow.hookimpl
        def ganflow_register_losses(register):
            register("half", object())
    """)
    with pytest.raises(PluginError) as err:
        load_plugins((path,))
    assert str(err.value) == (
        f"plugin {path}: loss 'half' is a object, not a loss: give it d_loss(step) and "
        "g_loss(step) (subclass ganflow.StepLoss), or discriminator_loss(real_logits, "
        "fake_logits) and generator_loss(fake_logits) (ganflow.Loss)")


DOWN = """
    import ganflow

    def load(options):
        raise Exception("the data server is down\\nretry later")

    @ganflow.hookimpl
    def ganflow_register_datasets(register):
        register("remote", load)
"""


def test_a_dataset_that_fails_is_named_in_one_line_and_debug_shows_why(cli, workdir, tmp_path):
    path = plugin(tmp_path, DOWN)
    code, line = one_line(cli("run", "--plugin-module", path, "--dataset", "remote", *TINY))
    assert code == 1
    assert line == (f"plugin {path}: dataset 'remote' failed to load: Exception: retry later "
                    "(ganflow --debug shows the traceback)")
    debug = cli("--debug", "run", "--plugin-module", path, "--dataset", "remote", *TINY)
    assert debug.exit_code == 1
    assert "Traceback" in debug.stderr and 'raise Exception("the data server is down' in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == "Error: " + line


def test_a_hook_without_hookimpl_is_refused_not_ignored(tmp_path):
    path = plugin(tmp_path, LOSS.replace("    @ganflow.hookimpl\n", ""))
    with pytest.raises(PluginError) as err:
        load_plugins((path,))
    assert str(err.value) == (f"plugin {path}: ganflow_register_losses is not decorated with "
                              "@ganflow.hookimpl, so ganflow would never call it: add the "
                              "decorator")


@pytest.mark.parametrize("decorated", [True, False])
def test_a_misspelled_hook_gets_a_did_you_mean(tmp_path, decorated):
    source = LOSS.replace("def ganflow_register_losses", "def ganflow_register_loss")
    if not decorated:
        source = source.replace("    @ganflow.hookimpl\n", "")
    with pytest.raises(PluginError) as err:
        load_plugins((plugin(tmp_path, source),))
    assert "ganflow_register_loss" in str(err.value)
    assert "(did you mean ganflow_register_losses?)" in str(err.value)


def test_a_recipe_with_a_misspelled_setting_fails_when_it_registers(cli, tmp_path):
    path = plugin(tmp_path, """
        import ganflow

        @ganflow.hookimpl
        def ganflow_register_recipes(register):
            register("fast", {"epochs": 1, "eval-evry": 5})
    """)
    code, line = one_line(cli("plugins", "--plugin-module", path))
    assert code == 1
    assert line == (f"plugin {path}: recipe fast: unknown setting 'eval_evry' (did you mean "
                    "'eval_every'?) (`ganflow settings` lists every setting by its config name)")


def test_a_factory_that_rejects_its_settings_names_the_plugin(cli, workdir, tmp_path):
    path = plugin(tmp_path, """
        import ganflow
        from ganflow_plugins.losses import NonSaturatingLoss

        @ganflow.hookimpl
        def ganflow_register_losses(register):
            register("scaled", NonSaturatingLoss, settings={"scale": ganflow.Setting(1.0)})
    """)
    code, line = one_line(cli("run", "--plugin-module", path, "--loss", "scaled", *TINY))
    assert code == 1
    assert line.startswith(f"plugin {path}: loss 'scaled' failed to build: TypeError: ")
    assert "scale" in line


def test_evaluate_says_which_plugin_a_models_dataset_needs(cli, workdir, tmp_path):
    path = plugin(tmp_path, """
        import numpy as np
        import ganflow

        def load(options):
            x = np.full((64, 8, 8, 1), -1.0, np.float32)
            for i in range(64):
                x[i, i % 6:i % 6 + 3, i // 6 % 6:i // 6 % 6 + 3] = 1.0
            return ganflow.DataSource.from_arrays(x)

        @ganflow.hookimpl
        def ganflow_register_datasets(register):
            register("squares", load)
    """)
    assert cli("run", "--plugin-module", path, "--dataset", "squares", "--eval-every", "0",
               *TINY).exit_code == 0
    code, line = one_line(cli("evaluate", "models:/dcgan-generator/1"))
    assert code == 2
    assert line == ("models:/dcgan-generator/1 was trained on dataset 'squares' from plugin "
                    f"{path}, which is not loaded here: pass --plugin-module {path}")
    (run,) = mlflow.search_runs(experiment_names=["ganflow"], output_format="list")
    assert run.data.tags["ganflow.plugin.dataset"] == path


def test_a_class_registered_without_settings_is_refused(tmp_path):
    path = plugin(tmp_path, LOSS.replace('register("mine", Mine())', 'register("mine", Mine)'))
    with pytest.raises(PluginError) as err:
        load_plugins((path,))
    assert str(err.value) == (f"plugin {path}: loss 'mine' is the class Mine: register an "
                              "instance (Mine()), or declare settings to make the class a "
                              "factory called with them")


@pytest.mark.parametrize("recipe, message", [
    ({"loss": "non-saturatin"}, "unknown loss 'non-saturatin'; known: hinge, lsgan, minimax, "
                                "non-saturating, rpgan, wgan (did you mean 'non-saturating'?)"),
    ({"optimizer": "adam:beta=0.5"}, "--optimizer adam: optimizer 'adam' has no setting 'beta' "
                                     "(did you mean 'beta2'?); its settings: beta1, beta2, "
                                     "epsilon, amsgrad"),
    ({"regularizers": ["r1:every=0"]}, "--regularizer r1: setting every must be at least 1, "
                                       "got 0"),
    ({"arch": "mlp:big"}, None),  # an argument's value is the plugin's to judge, at run time
    ({"arch": "dcgan:big"}, "--arch dcgan: architecture 'dcgan' has no setting 'big'; its "
                            "settings: width, d_width, sn, sigma_grad, pack"),
])
def test_a_recipe_naming_a_plugin_wrongly_fails_in_ganflow_plugins(cli, tmp_path, recipe,
                                                                   message):
    path = plugin(tmp_path, f"""
        import ganflow

        @ganflow.hookimpl
        def ganflow_register_recipes(register):
            register("typo", {recipe!r})
    """)
    result = cli("plugins", "--plugin-module", path)
    if message is None:
        assert result.exit_code == 0
        return
    assert one_line(result) == (1, f"plugin {path}: recipe typo: {message}")


def test_an_architecture_that_fails_is_named_not_the_trainer(cli, workdir, tmp_path):
    path = plugin(tmp_path, """
        import ganflow

        class Broken:
            def build_generator(self, spec, latent_dim):
                return {}["layers"]

            def build_discriminator(self, spec):
                raise AssertionError

        @ganflow.hookimpl
        def ganflow_register_architectures(register):
            register("broken", Broken())
    """)
    code, line = one_line(cli("run", "--plugin-module", path, "--arch", "broken", *TINY))
    assert code == 1
    assert line == (f"plugin {path}: architecture 'broken' failed to build its generator: "
                    "KeyError: 'layers' (ganflow --debug shows the traceback)")


def test_a_loss_may_refuse_a_setup_with_a_usage_error(cli, workdir, tmp_path):
    path = plugin(tmp_path, """
        import ganflow
        from ganflow_plugins.losses import NonSaturatingLoss

        class LabelsOnly(NonSaturatingLoss):
            def d_loss(self, step):
                if step.labels is None:
                    raise ganflow.UsageError("loss labels-only needs labelled data")
                return super().d_loss(step)

        @ganflow.hookimpl
        def ganflow_register_losses(register):
            register("labels-only", LabelsOnly())
    """)
    code, line = one_line(cli("run", "--plugin-module", path, "--loss", "labels-only",
                              "--dataset", "ring8", "--arch", "mlp", *TINY))
    assert (code, line) == (2, "loss labels-only needs labelled data")


def test_two_plugins_with_one_name(installed, tmp_path, monkeypatch):
    (tmp_path / "mine.py").write_text(textwrap.dedent(LOSS).replace('"mine"', '"other"'))
    with pytest.raises(PluginError, match="two plugins are named 'mine': mine and ganflow_mine"):
        load_plugins(("mine",))


def test_a_trainer_that_builds_something_else_is_named(cli, workdir, tmp_path):
    path = plugin(tmp_path, """
        import ganflow

        class Plain:
            def build(self, setup):
                generator, discriminator = setup.networks()
                return generator

        @ganflow.hookimpl
        def ganflow_register_trainers(register):
            register("plain", Plain(), "returns G itself")
    """)
    code, line = one_line(cli("run", "--plugin-module", path, "--trainer", "plain", *TINY))
    assert code == 1
    assert line == (f"plugin {path}: trainer 'plain' built a Sequential; build(setup) must "
                    "return a compiled ganflow.GAN (or subclass)")
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []


def test_a_regularizer_of_no_network_is_refused_when_it_registers(tmp_path):
    path = plugin(tmp_path, """
        import ganflow

        class Sideways(ganflow.Regularizer):
            network = "critic"

            def __call__(self, step):
                return 0.0

        @ganflow.hookimpl
        def ganflow_register_regularizers(register):
            register("sideways", Sideways())
    """)
    with pytest.raises(PluginError) as err:
        load_plugins((path,))
    assert str(err.value) == (f"plugin {path}: regularizer 'sideways' Sideways.network must be "
                              "'discriminator' or 'generator', got 'critic'")


def test_a_plugin_module_that_exits_as_it_loads_is_named(cli, tmp_path):
    path = plugin(tmp_path, """
        import sys

        sys.exit(3)
    """)
    code, line = one_line(cli("plugins", "--plugin-module", path))
    assert (code, line) == (1, f"plugin module {path!r} failed to import: it called "
                               "sys.exit(3) while it was imported")


INTERRUPTED_WHILE_LOADING = """
    import os
    import signal

    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the plugins load
"""


def test_ctrl_c_before_anything_starts_is_one_line_exit_130(cli, workdir, tmp_path):
    path = plugin(tmp_path, INTERRUPTED_WHILE_LOADING)
    result = cli("run", "--plugin-module", path, *TINY)
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines()[-1] == "Stopped by SIGINT: nothing was made"
    assert not (workdir / "mlflow.db").exists()
