"""PacGAN's mode metrics, the mlp options PacGAN's networks need, the toy-grid recipe and the
mode-collapse benchmark (bench/bench_modes.py)."""

import importlib.util
import math
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

import ganflow
from ganflow.errors import UsageError
from ganflow.mixture import Mixture
from ganflow.toy import pacgan_metrics, toy_metrics
from ganflow.types import DatasetOptions

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_modes.py"


def density(plugins, name):
    return plugins.dataset(name)[0].obj(DatasetOptions()).density


def test_pacgan_metrics_of_exact_samples_and_their_scale_invariance(plugins):
    grid = density(plugins, "grid25")
    x = grid.sample(2_500, seed=0)
    m = pacgan_metrics(x, grid)
    assert m["pacgan_modes"] == 25
    assert m["pacgan_hq"] == pytest.approx(1 - math.exp(-4.5), abs=0.006)  # P(chi2_2 <= 9)
    assert m["pacgan_reverse_kl"] < 0.02
    # Only the first 2,500 count; ganflow's own metrics of the same points agree on HQ.
    assert pacgan_metrics(np.concatenate([x, np.full((500, 2), 9.0)]), grid) == m
    assert toy_metrics(x, grid)["hq_fraction"] == m["pacgan_hq"]
    # PacGAN's ring (radius 1, std 0.01) scores ganflow's (radius 2, std 0.02) halved the same.
    ring = density(plugins, "ring8")
    y = ring.sample(2_500, seed=1)
    assert pacgan_metrics(y / 2, Mixture(ring.means / 2, 0.01)) == pacgan_metrics(y, ring)


def test_pacgan_metrics_of_a_degenerate_generator(plugins):
    grid = density(plugins, "grid25")
    one = pacgan_metrics(np.tile(grid.means[7], (2_500, 1)), grid)
    assert one == {"pacgan_modes": 1, "pacgan_hq": 1.0, "pacgan_reverse_kl": math.log(25)}
    # A single high-quality sample captures its mode for PacGAN, not for ganflow's 1% share.
    few = np.full((2_500, 2), 1.0)
    few[:3] = grid.means[:3]
    m = pacgan_metrics(few, grid)
    assert m["pacgan_modes"] == 3 and m["pacgan_hq"] == pytest.approx(3 / 2_500)
    assert toy_metrics(few, grid)["modes_captured"] == 0
    broken = np.full((2_500, 2), np.nan)
    broken[::2] = np.inf
    m = pacgan_metrics(broken, grid)
    assert m["pacgan_modes"] == 0 and m["pacgan_hq"] == 0 and math.isnan(m["pacgan_reverse_kl"])
    with pytest.raises(ValueError, match="2,500 samples, got 100"):
        pacgan_metrics(grid.sample(100, seed=0), grid)


def test_mlp_options_build_pacgans_networks(plugins):
    _, mlp = plugins.architecture("mlp:g=40,40,40,40/d=20,20,20/maxout=5/bn/pack=4/scale=4")
    assert (mlp.g_sizes, mlp.d_sizes, mlp.maxout, mlp.bn, mlp.pack, mlp.scale) == (
        (40, 40, 40, 40), (20, 20, 20), 5, True, 4, 4.0)
    spec = ganflow.DataSpec(shape=(2,), size=10)
    g = mlp.build_generator(spec, 3)
    names = [type(layer).__name__ for layer in g.layers]
    assert names.count("BatchNormalization") == 4 and names[-1] == "Rescaling"
    assert np.asarray(g(np.zeros((6, 3), np.float32))).shape == (6, 2)
    d = mlp.build_discriminator(spec)
    inner = d.inner
    assert [type(layer).__name__ for layer in inner.layers][:3] == ["Rescaling", "Dense", "Maxout"]
    assert inner.layers[1].units == 100 and inner.layers[2].compute_output_shape((None, 100)) == (
        None, 20)
    assert np.asarray(d(np.zeros((6, 2), np.float32))).shape == (6, 1)
    # The maxout units take the largest of each group of pieces.
    maxout = inner.layers[2]
    x = np.arange(10, dtype=np.float32)[None] * np.array([[1.0], [-1.0]], np.float32)
    np.testing.assert_array_equal(np.asarray(type(maxout)(5)(x)), [[4, 9], [0, -5]])
    plain = plugins.architecture("mlp:32,16")[1]
    assert (plain.g_sizes, plain.d_sizes, plain.maxout, plain.bn, plain.scale) == (
        (32, 16), (32, 16), 1, False, 1.0)
    for bad in ("mlp:32/maxout=0", "mlp:32/scale=-1", "mlp:32/bn=2", "mlp:g=/pack=2",
                "mlp:32/depth=3"):
        with pytest.raises(UsageError, match="--arch mlp:.*/scale=S"):
            plugins.architecture(bad)


def test_toy_grid_recipe_is_registered_with_its_settings(plugins):
    recipe = plugins.recipes.get("toy-grid")
    from ganflow_plugins.toy import TOY_GRID

    assert recipe.obj == TOY_GRID and recipe.obj["dataset"] == "grid25"
    assert "pack=" in recipe.obj["arch"] and "scale=4" in recipe.obj["arch"]
    assert recipe.obj["lr_schedule"].startswith("linear")


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_modes", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_modes"] = module  # as an import makes it: its dataclass needs it
    spec.loader.exec_module(module)
    return module


def test_bench_modes_keys_runs_by_what_they_train(plugins):
    bench = load_bench()
    from ganflow.resolve import configure

    def key(method, budget=None, **extra):
        recipe, flags = bench.cell_flags(method, "grid25", budget, plugins)
        return bench.training_key(configure(plugins, recipe, {**flags, **extra}))

    # PacGAN2 at the recipe's length is the toy-grid recipe (pack 2): one set of runs.
    assert key("pacgan2") == key("toy-grid")
    # Where it is tracked does not matter; what it learns does.
    assert key("gan", tracking_uri="sqlite:///elsewhere.db", experiment="x") == key("gan")
    keys = {key("gan"), key("pacgan2"), key("pacgan4"), key("pacgan2", budget=1000),
            key("toy-grid", lr_g=1e-3), key("toy"), key("hinge")}
    assert len(keys) == 7
    assert key("hinge") == key("toy-grid", loss="hinge")


@pytest.mark.slow
def test_bench_modes_runs_cells_into_mlflow_and_a_table(workdir, capsys):
    bench = load_bench()
    uri = f"sqlite:///{workdir / 'bench.db'}"
    argv = ["--seeds", "1", "--methods", "gan", "pacgan2", "--datasets", "grid25",
            "--budget", "100", "--out", "table.md", "--tracking-uri", uri]
    assert bench.main([*argv, "--jobs", "2"]) == 0  # the two runs in two worker processes
    table = (workdir / "table.md").read_text()
    lines = table.splitlines()
    assert "modes (PacGAN)" in lines[0] and "modes >= 1% (ganflow)" in lines[0]
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| GAN", "| PacGAN2"]
    assert all(" | grid25 | " in line and "pack=" in line for line in lines[2:])
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("modes-benchmark")
    runs = client.search_runs([experiment.experiment_id])
    cells = [r for r in runs if r.data.tags.get("bench.cell")]
    seeds = [r for r in runs if not r.data.tags.get("bench.cell")]
    assert sorted(r.data.params["method"] for r in cells) == ["gan", "pacgan2"]
    assert len(seeds) == 2 and {r.data.tags["mlflow.parentRunId"] for r in seeds} == {
        r.info.run_id for r in cells}
    assert all(0 <= r.data.metrics["toy/pacgan_modes"] <= 25 for r in seeds)
    assert all("toy/pacgan_hq_mean" in r.data.metrics for r in cells)
    # Run again, the store has every seed: nothing is trained, the same table comes out.
    capsys.readouterr()
    assert bench.main([*argv, "--table-only"]) == 0
    assert (workdir / "table.md").read_text() == table
    assert " seed " not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--methods", "wgan"])
    assert "--methods: unknown wgan; known: gan, pacgan2" in capsys.readouterr().err
