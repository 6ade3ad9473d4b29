import math

import numpy as np
import pytest

import ganflow
from ganflow.errors import UsageError
from ganflow.mixture import Mixture, jsd, kde_jsd, mixture_jsd
from ganflow.toy import toy_metrics
from ganflow.types import DatasetOptions


def ring(plugins):
    entry, _ = plugins.dataset("ring8")
    return entry.obj(DatasetOptions()).density


def test_log_prob_matches_scipy_and_sums_to_one():
    from scipy import integrate, stats

    m = Mixture([-2.0, 1.0], [0.5, 1.5], [0.3, 0.7])
    x = np.linspace(-4, 4, 9)
    expected = 0.3 * stats.norm.pdf(x, -2, 0.5) + 0.7 * stats.norm.pdf(x, 1, 1.5)
    np.testing.assert_allclose(m.prob(x), expected, rtol=1e-12)
    grid = m.grid()
    assert abs(integrate.simpson(m.prob(grid), x=grid) - 1.0) < 1e-5


def test_jsd_closed_forms():
    a = Mixture([0.0], [1.0])
    assert mixture_jsd(a, a) == 0.0
    assert mixture_jsd(a, Mixture([100.0], [1.0])) == pytest.approx(math.log(2), abs=1e-9)
    # Half the mass shared: p = N(0), q = (N(0) + N(100)) / 2 gives
    # JSD = 1/2 [log(4/3)] + 1/4 [log(2/3)] + 1/4 [log 2] exactly.
    q = Mixture([0.0, 100.0], [1.0, 1.0])
    exact = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    assert mixture_jsd(a, q) == pytest.approx(exact, abs=1e-9)
    x = np.linspace(-1, 2, 3001)
    box_p, box_q = (x >= 0) & (x < 1), (x >= 0.5) & (x < 1.5)
    # Half-overlapping uniform densities: JSD = log 2 / 2.
    assert jsd(box_p * 1.0, box_q * 1.0, x) == pytest.approx(math.log(2) / 2, abs=2e-3)


def test_kde_jsd_is_small_for_exact_samples_and_large_for_one_mode():
    m = Mixture.from_dict({"means": [-2, 2], "stds": [0.5, 0.5]})
    assert kde_jsd(m, m.sample(10_000, seed=0)[:, 0]) < 0.01
    one = Mixture([2.0], [0.5]).sample(10_000, seed=0)[:, 0]
    assert kde_jsd(m, one) == pytest.approx(mixture_jsd(m, Mixture([2.0], [0.5])), abs=0.01)


def test_metrics_of_exact_mixture_samples(plugins):
    metrics = toy_metrics(ring(plugins).sample(20_000, seed=3), ring(plugins))
    assert metrics["modes_captured"] == 8
    # Within 3 std in 2-D: P(chi2_2 <= 9) = 1 - exp(-4.5).
    assert metrics["hq_fraction"] == pytest.approx(1 - math.exp(-4.5), abs=0.003)
    assert metrics["reverse_kl"] < 0.002
    one_d = Mixture([-2.0, 2.0], [0.5, 0.5])
    metrics = toy_metrics(one_d.sample(20_000, seed=3), one_d)
    assert metrics["modes_captured"] == 2
    assert metrics["hq_fraction"] == pytest.approx(0.9973, abs=0.002)
    assert metrics["jsd"] < 0.01


def test_metrics_of_samples_all_on_one_mode(plugins):
    data = ring(plugins)
    samples = Mixture(data.means[:1], 0.02).sample(5_000, seed=0)
    metrics = toy_metrics(samples, data)
    assert metrics["modes_captured"] == 1
    assert metrics["hq_fraction"] == pytest.approx(0.9889, abs=0.01)
    assert metrics["reverse_kl"] == pytest.approx(math.log(8))
    far = toy_metrics(np.full((100, 2), 10.0), data)
    assert far["modes_captured"] == 0 and far["hq_fraction"] == 0 and math.isnan(far["reverse_kl"])


def test_toy_datasets(plugins):
    grid = plugins.dataset("grid25")[0].obj(DatasetOptions()).density
    assert grid.n_components == 25 and set(grid.means[:, 0]) == {-4, -2, 0, 2, 4}
    assert np.allclose(grid.stds, 0.05)
    r = ring(plugins)
    assert np.allclose(np.linalg.norm(r.means, axis=1), 2.0) and np.allclose(r.stds, 0.02)
    entry, argument = plugins.dataset("gauss1d:means=-3,0,3/stds=0.4/weights=1,1,2")
    source = entry.obj(DatasetOptions(argument))
    assert source.spec.shape == (1,) and source.density.weights.tolist() == [0.25, 0.25, 0.5]
    x = np.stack(list(source.examples().as_numpy_iterator()))
    assert x.shape == (source.spec.size, 1)
    assert abs(x.mean() - 0.75) < 0.05  # 0.25 * -3 + 0.5 * 3


@pytest.mark.parametrize("text, message", [
    ("means=1,2/stds=1,1,1", "a mixture of 2 components needs 1 or 2 stds"),
    ("means=0/stds=-1", "mixture stds must be positive"),
    ("means=nan/stds=1", "mixture means must be finite numbers, got [nan]"),
    ("means=0,inf/stds=1", "mixture means must be finite numbers, got [0.0, inf]"),
    ("mean=0/stds=1", "expected {\"means\""),
    ("means=a", "cannot read 'means=a'"),
    ('{"means": [0], "stds": [1], "w": [1]}', "unknown key(s) w"),
])
def test_bad_mixtures_say_what_is_wrong(text, message):
    with pytest.raises(UsageError, match=None) as err:
        Mixture.parse(text)
    assert message in str(err.value)


def test_mixture_sampler_is_exact_and_has_no_weights():
    m = Mixture([-2.0, 2.0], [0.5, 0.1], [0.25, 0.75])
    sampler = m.sampler()
    assert sampler.trainable_weights == [] and sampler.input_shape == (None, 2)
    z = np.random.default_rng(0).standard_normal((40_000, 2)).astype(np.float32)
    x = np.asarray(sampler(z))[:, 0]
    right = x > 0
    assert right.mean() == pytest.approx(0.75, abs=0.01)
    assert x[right].std() == pytest.approx(0.1, rel=0.03)
    assert x[~right].mean() == pytest.approx(-2.0, abs=0.02)


def test_mlp_arguments(plugins):
    _, mlp = plugins.architecture("mlp:32,16/pack=2")
    assert mlp.sizes == (32, 16) and mlp.pack == 2
    spec = ganflow.DataSpec(shape=(2,), size=10)
    d = mlp.build_discriminator(spec)
    logits = np.asarray(d(np.zeros((5, 2), np.float32)))
    assert logits.shape == (5, 1)  # an odd batch is padded to whole packs
    assert plugins.architecture("mlp")[1].sizes == (256, 256, 256)
    for bad in ("mlp:0", "mlp:a,b", "mlp:32/packs=2"):
        with pytest.raises(UsageError, match="--arch mlp:"):
            plugins.architecture(bad)


def test_packed_discriminator_gives_each_example_its_packs_logit(plugins):
    _, mlp = plugins.architecture("mlp:8/pack=2")
    d = mlp.build_discriminator(ganflow.DataSpec(shape=(1,), size=10))
    x = np.arange(6, dtype=np.float32)[:, None]
    logits = np.asarray(d(x))[:, 0]
    assert logits[0] == logits[1] and logits[2] == logits[3] and logits[0] != logits[2]
