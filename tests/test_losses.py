import numpy as np
import pytest

import ganflow
from ganflow.gan import value_function
from ganflow_plugins.losses import MinimaxLoss, NonSaturatingLoss

REAL = np.array([[-2.0], [0.0], [3.0]], dtype=np.float32)
FAKE = np.array([[-1.5], [0.5], [4.0]], dtype=np.float32)


def log_d(s):
    return np.log(1.0 / (1.0 + np.exp(-s.astype(np.float64))))


def log_1m_d(s):
    return np.log(1.0 - 1.0 / (1.0 + np.exp(-s.astype(np.float64))))


def d_step(real=REAL, fake=FAKE):
    return ganflow.Step.from_logits(real, fake)


def g_step(fake=FAKE):
    return ganflow.Step.from_logits(fake_logits=fake, update="generator")


@pytest.mark.parametrize("loss", [MinimaxLoss(), NonSaturatingLoss()])
def test_discriminator_loss_is_minus_v(loss):
    expected = -(log_d(REAL).mean() + log_1m_d(FAKE).mean())
    assert float(loss.d_loss(d_step())) == pytest.approx(expected, rel=1e-6)


def test_minimax_generator_loss_is_log_one_minus_d():
    assert float(MinimaxLoss().g_loss(g_step())) == pytest.approx(log_1m_d(FAKE).mean(), rel=1e-6)


def test_non_saturating_generator_loss_is_minus_log_d():
    assert float(NonSaturatingLoss().g_loss(g_step())) == pytest.approx(-log_d(FAKE).mean(),
                                                                        rel=1e-6)


def test_lecture_metrics_are_v_its_jsd_and_the_mean_d():
    metrics = {k: float(v) for k, v in MinimaxLoss().metrics(d_step()).items()}
    v = log_d(REAL).mean() + log_1m_d(FAKE).mean()
    assert metrics["value"] == pytest.approx(v, rel=1e-6)
    assert metrics["jsd_estimate"] == pytest.approx((v + 2 * np.log(2)) / 2, rel=1e-6)
    assert metrics["d_real"] == pytest.approx(np.exp(log_d(REAL)).mean(), rel=1e-6)
    assert metrics["d_fake"] == pytest.approx(np.exp(log_d(FAKE)).mean(), rel=1e-6)


def test_value_function_matches_definition():
    expected = log_d(REAL).mean() + log_1m_d(FAKE).mean()
    assert float(value_function(REAL, FAKE)) == pytest.approx(expected, rel=1e-6)


def test_undecided_discriminator_gives_v_of_minus_two_log_two():
    zeros = np.zeros((4, 1), np.float32)
    assert float(value_function(zeros, zeros)) == pytest.approx(-2 * np.log(2), rel=1e-6)


def test_losses_stay_finite_and_exact_at_extreme_logits():
    # log(sigmoid(-100)) underflows to -inf in float32; softplus keeps it exact.
    real = np.array([[100.0]], np.float32)
    fake = np.array([[-100.0]], np.float32)
    assert float(MinimaxLoss().d_loss(d_step(real, fake))) == pytest.approx(0.0, abs=1e-6)
    assert float(NonSaturatingLoss().g_loss(g_step(fake))) == pytest.approx(100.0, rel=1e-6)
    assert float(MinimaxLoss().g_loss(g_step(fake))) == pytest.approx(0.0, abs=1e-6)


def test_a_generator_step_without_real_data_says_how_to_get_it():
    with pytest.raises(ganflow.PluginError, match="must set generator_uses_real = True"):
        g_step().real_logits
