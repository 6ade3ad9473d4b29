import pytest

from ganflow.config import FIELDS, RunConfig, load_config_file, resolve
from ganflow.config import user_layers
from ganflow.errors import UsageError
from ganflow.resolve import configure


def test_layers_recipe_then_file_then_flags(plugins, tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"epochs": 3, "batch-size": 8, "seed": 5}')
    config = configure(plugins, "dcgan", given=user_layers(str(path), {"seed": 11, "loss": None}))
    assert (config.epochs, config.batch_size, config.seed) == (3, 8, 11)
    assert config.loss == "non-saturating" and config.dataset == "digits"  # the recipe's
    assert config.model_name == "dcgan-generator"


def test_params_hold_every_set_field_as_text_and_no_unset_one():
    params = RunConfig(plugin_modules=("a.py", "b"), image_size=None, augment=()).params()
    unset = {"image_size", "augment"} | {name for name, value in vars(RunConfig()).items()
                                         if value is None or value == ()} - {"plugin_modules"}
    assert set(params) == set(FIELDS) - unset
    assert params["plugin_modules"] == "a.py;b" and "" not in params.values()
    assert params["register"] == "True" and params["lr_g"] == "0.0002"


@pytest.mark.parametrize("layer, message", [
    ({"epoch": 1}, "flags: unknown setting 'epoch' (did you mean 'epochs'?)"),
    ({"epochs": 1.5}, "flags: epochs must be int, got 1.5"),
    ({"epochs": True}, "flags: epochs must be int, got True"),
    ({"register": "maybe"}, "flags: register must be bool, got 'maybe'"),
    ({"jit": "always"}, "--jit must be one of auto, on, off, got 'always'"),
    ({"beta1": 0.5}, "flags: beta1 is no longer a setting: Adam's betas are settings of the "
                     "optimizer now: optimizer: adam:beta1=0.5"),
    ({"regularizers": [1]}, "flags: regularizers must be a list of text, got [1]"),
    ({"lr_d": float("inf")}, "--lr-d must be a finite number, got inf"),
    ({"steps_per_epoch": 0}, "--steps-per-epoch must be at least 1, got 0"),
    ({"steps_per_execution": 0}, "--steps-per-execution must be at least 1, got 0"),
    ({"jit": "on", "deterministic": True}, "--jit on and --deterministic do not go together: "
     "Keras compiles without XLA under op determinism (not every XLA op is deterministic); "
     "drop one of them"),
])
def test_bad_settings_are_named(layer, message):
    with pytest.raises(UsageError) as err:
        resolve(("flags", layer))
    assert str(err.value) == message


def test_recipe_with_a_bad_default_names_the_recipe():
    with pytest.raises(UsageError, match="recipe broken: unknown setting 'lr'"):
        resolve(("recipe broken", {"lr": 1e-3}))


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    with pytest.raises(UsageError, match="--config .*bad.yaml: cannot parse it"):
        load_config_file(str(bad))
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(UsageError, match="expected a mapping"):
        load_config_file(str(listed))


def test_none_clears_a_recipes_list(plugins):
    assert configure(plugins, "dcgan", {}).regularizers == ("r1:gamma=1",)
    assert configure(plugins, "dcgan", {"regularizers": ("none",)}).regularizers == ()
