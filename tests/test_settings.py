"""Plugin settings (NAME:key=value), optimizers and learning-rate schedules by name."""

import json

import keras
import mlflow
import numpy as np
import pytest

from ganflow.errors import UsageError
from ganflow.prepare import prepare
from ganflow.resolve import configure, resolve as resolve_run
from ganflow.settings import Setting, resolve, split_spec

from conftest import TINY


def test_split_spec():
    assert split_spec("adam") == ("adam", {})
    assert split_spec("adam:beta1=0.0, beta2=0.9") == ("adam", {"beta1": "0.0", "beta2": "0.9"})
    with pytest.raises(UsageError, match=r"write settings as adam:key=value,key=value"):
        split_spec("adam:=0.5")
    name, values = split_spec("dcgan:sn")  # a bool setting named alone is true
    assert (name, values) == ("dcgan", {"sn": "true"})
    assert resolve({"sn": Setting(False)}, values, "dcgan") == {"sn": True}
    with pytest.raises(UsageError, match="adam setting beta1 needs a value: write it as "
                                         "key=value"):
        resolve({"beta1": Setting(0.5)}, split_spec("adam:beta1")[1], "adam")
    with pytest.raises(UsageError, match="beta1 is given twice"):
        split_spec("adam:beta1=0,beta1=1")


DECLARED = {"gp": Setting(10.0, "penalty", minimum=0.0), "mode": Setting("a", choices=("a", "b")),
            "lazy": Setting(False), "every": Setting(1, minimum=1)}


def test_values_are_typed_defaults_filled():
    values = resolve(DECLARED, {"gp": "2.5", "lazy": "true", "every": "4"}, "loss 'x'")
    assert values == {"gp": 2.5, "mode": "a", "lazy": True, "every": 4}
    assert resolve(DECLARED, {"gp": 3, "lazy": False}, "loss 'x'")["gp"] == 3.0  # from YAML


@pytest.mark.parametrize("given, message", [
    ({"pg": "1"}, "loss 'x' has no setting 'pg' (did you mean 'gp'?); its settings: gp, mode, "
                  "lazy, every"),
    ({"gp": "much"}, "loss 'x' setting gp must be a finite float, got 'much'"),
    ({"gp": "nan"}, "loss 'x' setting gp must be a finite float, got 'nan'"),
    ({"gp": "-1"}, "loss 'x' setting gp must be at least 0, got -1.0"),
    ({"mode": "c"}, "loss 'x' setting mode must be one of a, b, got 'c'"),
    ({"lazy": "perhaps"}, "loss 'x' setting lazy must be a finite bool, got 'perhaps'"),
    ({"every": "1.5"}, "loss 'x' setting every must be a finite int, got '1.5'"),
])
def test_bad_values_are_named(given, message):
    with pytest.raises(UsageError) as err:
        resolve(DECLARED, given, "loss 'x'")
    assert str(err.value) == message


def bad_run(cli, *args):
    result = cli("run", *args, *TINY)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return result.exit_code, lines[0].removeprefix("Error: ")


@pytest.mark.parametrize("args, message", [
    (["--loss", "minimax:gp=1"], "--loss minimax: loss 'minimax' takes no settings, got gp"),
    (["--optimizer", "adam:beta3=0.9"], "--optimizer adam: optimizer 'adam' has no setting "
                                        "'beta3' (did you mean 'beta2'?); its settings: beta1, "
                                        "beta2, epsilon, amsgrad"),
    (["--d-optimizer", "sgd:momentum=fast"], "--d-optimizer sgd: optimizer 'sgd' setting "
                                             "momentum must be a finite float, got 'fast'"),
    (["--optimizer", "adagrad"], "unknown optimizer 'adagrad'; known: adam, adamw, rmsprop, "
                                 "sgd (did you mean 'adam'?)"),
    (["--regularizer", "r1:gamma=-1"], "--regularizer r1: regularizer 'r1' setting gamma must "
                                       "be at least 0, got -1.0"),
    (["--regularizer", "r1:every=0"], "--regularizer r1: setting every must be at least 1, got 0"),
    (["--regularizer", "r1", "--regularizer", "r1:gamma=1"],
     "--regularizer: each regularizer may be given once, got r1, r1"),
    (["--lr-schedule", "cosine:warmup=1.5"], "--lr-schedule cosine: learning-rate schedule "
                                             "'cosine' setting warmup must be a finite int, got "
                                             "'1.5'"),
    (["--trainer", "gna"], "unknown trainer 'gna'; known: gan, mle (did you mean 'gan'?)"),
    (["--trainer", "mle"], "architecture dcgan has no density to fit by maximum likelihood (it "
                           "has networks): use --arch gmm[:K], or --trainer gan"),

    (["--trainer", "gan", "--arch", "gmm"], "architecture gmm has no networks to train "
                                            "adversarially (it is fitted by maximum "
                                            "likelihood): use --trainer mle"),
])
def test_bad_settings_are_one_line_exit_2_before_anything_starts(cli, workdir, args, message):
    assert bad_run(cli, *args) == (2, message)
    assert not (workdir / "mlflow.db").exists()


def test_optimizers_by_name_separately_for_g_and_d(plugins):
    config = configure(plugins, "dcgan", {
        "optimizer": "sgd:momentum=0.9,nesterov=true", "d_optimizer": "rmsprop:rho=0.8",
        "lr_g": 0.01, "lr_d": 0.002, "eval_every": 0})
    gan = prepare(resolve_run(config, plugins)).gan
    assert isinstance(gan.g_optimizer, keras.optimizers.SGD)
    assert gan.g_optimizer.momentum == 0.9 and gan.g_optimizer.nesterov
    assert float(gan.g_optimizer.learning_rate) == pytest.approx(0.01)
    assert isinstance(gan.d_optimizer, keras.optimizers.RMSprop) and gan.d_optimizer.rho == 0.8
    assert float(gan.d_optimizer.learning_rate) == pytest.approx(0.002)


def test_recipe_optimizer_settings_reach_keras(plugins):
    gan = prepare(resolve_run(configure(plugins, "toy", {}), plugins)).gan
    for optimizer in (gan.g_optimizer, gan.d_optimizer):
        assert isinstance(optimizer, keras.optimizers.Adam)
        assert (optimizer.beta_1, optimizer.beta_2) == (0.5, 0.9)


def rates(plugins, spec, total=100, rate=1e-3):
    component = plugins.component(plugins.schedules, spec, "--lr-schedule")
    schedule = component.build(rate, total)
    return np.array([float(schedule(step)) if callable(schedule) else schedule
                     for step in (0, 10, 50, 100)])


def test_schedules(plugins):
    np.testing.assert_allclose(rates(plugins, "constant"), [1e-3] * 4)
    np.testing.assert_allclose(rates(plugins, "linear"), [1e-3, 0.9e-3, 0.5e-3, 0.0], atol=1e-9)
    np.testing.assert_allclose(rates(plugins, "linear:end=0.1"), [1e-3, 0.91e-3, 0.55e-3, 1e-4],
                               rtol=1e-5)
    cosine = [1e-3 * 0.5 * (1 + np.cos(np.pi * t / 100)) for t in (0, 10, 50, 100)]
    np.testing.assert_allclose(rates(plugins, "cosine"), cosine, rtol=1e-5, atol=1e-9)
    warm = rates(plugins, "cosine:warmup=20")
    assert warm[0] == pytest.approx(0.0, abs=1e-9) and warm[1] == pytest.approx(0.5e-3, rel=1e-4)
    assert warm[-1] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(rates(plugins, "linear:warmup=20")[:2], [0.0, 0.5e-3], atol=1e-9)


def test_the_schedule_spans_each_optimizers_own_updates(plugins):
    config = configure(plugins, "dcgan", {
        "lr_schedule": "linear", "d_steps": 2, "epochs": 3, "steps_per_epoch": 10,
        "eval_every": 0})
    gan = prepare(resolve_run(config, plugins)).gan
    # 30 generator updates and 60 discriminator updates in the run: both decay to 0 at the end.
    for optimizer, total in ((gan.g_optimizer, 30), (gan.d_optimizer, 60)):
        for done, rate in ((0, 2e-4), (total // 2, 1e-4), (total, 0.0)):
            optimizer.iterations.assign(done)
            assert float(optimizer.learning_rate) == pytest.approx(rate, abs=1e-9)


def test_settings_become_params_and_regularizers_log_their_values(cli, workdir):
    result = cli("run", "--regularizer", "r1:gamma=5,every=2", "--optimizer",
                 "adam:beta2=0.99", "--lr-schedule", "cosine", "--no-register", *TINY)
    assert result.exit_code == 0, result.output
    (run,) = mlflow.search_runs(experiment_names=["ganflow"], output_format="list")
    params = run.data.params
    assert params["regularizers"] == "r1:gamma=5,every=2"
    assert (params["regularizer.r1.gamma"], params["regularizer.r1.every"]) == ("5.0", "2")
    assert (params["g_optimizer.beta1"], params["d_optimizer.beta2"]) == ("0.5", "0.99")
    assert (params["lr_schedule.end"], params["trainer"]) == ("0.0", "gan")
    assert run.data.tags["ganflow.plugin.regularizer.r1"] == "ganflow_plugins.regularizers"
    assert run.data.metrics["reg/r1"] > 0 and "epoch/mean_reg_r1" in run.data.metrics


def test_plugins_lists_settings(cli):
    listed = json.loads(cli("plugins", "--json").stdout)
    adam = next(e for e in listed["optimizers"] if e["name"] == "adam[:SETTINGS]")
    assert adam["settings"]["beta1"] == {"type": "float", "default": 0.5,
                                         "help": "decay of the first-moment average"}
    assert [e["name"] for e in listed["regularizers"]] == ["gp[:SETTINGS]",
                                                           "orthogonal[:SETTINGS]",
                                                           "pl[:SETTINGS]",
                                                           "r1[:SETTINGS]",
                                                           "r2[:SETTINGS]"]
    text = cli("plugins").stdout
    assert "      gamma: float >= 0, default 10.0: the penalty's weight" in text


def test_settings_lists_config_names_with_a_recipes_values(cli):
    out = cli("settings", "--plugin", "dcgan").stdout
    assert "eval_every = 25    (--eval-every)" in out
    assert 'optimizer = "adam:beta1=0.5"    (--optimizer)' in out
    assert 'regularizers = ["r1:gamma=1"]    (--regularizer)' in out
    assert "    add a regularizer to its network's loss: r1, r2 or a plugin's" in out
    assert "plugin_modules = unset    (--plugin-module)" in out


THIRD_PARTY = '''
import keras
import ganflow


def lion(learning_rate, beta1):
    return keras.optimizers.Lion(learning_rate, beta_1=beta1)


def halved(learning_rate, total_steps, at):
    boundary = int(at * total_steps)
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        [boundary], [learning_rate, learning_rate / 2])


@ganflow.hookimpl
def ganflow_register_optimizers(register):
    register("lion", lion, "Lion (Chen et al. 2023)",
             settings={"beta1": ganflow.Setting(0.9, "interpolation factor", minimum=0.0)})


@ganflow.hookimpl
def ganflow_register_schedules(register):
    register("halved", halved, "the rate, halved after a share of the run",
             settings={"at": ganflow.Setting(0.5, "share of the run", minimum=0.0)})
'''


def test_third_party_optimizer_and_schedule(tmp_path):
    from ganflow.plugins import load_plugins

    path = tmp_path / "lion.py"
    path.write_text(THIRD_PARTY)
    plugins = load_plugins((str(path),))
    config = configure(plugins, "dcgan", {
        "optimizer": "lion:beta1=0.95", "lr_schedule": "halved:at=0.25", "epochs": 2,
        "steps_per_epoch": 10, "eval_every": 0, "plugin_modules": (str(path),)})
    gan = prepare(resolve_run(config, plugins)).gan
    assert isinstance(gan.g_optimizer, keras.optimizers.Lion) and gan.g_optimizer.beta_1 == 0.95
    gan.g_optimizer.iterations.assign(6)  # the run has 20 generator updates: halved after 5
    assert float(gan.g_optimizer.learning_rate) == pytest.approx(1e-4)
    gan.d_optimizer.iterations.assign(4)
    assert float(gan.d_optimizer.learning_rate) == pytest.approx(2e-4)
