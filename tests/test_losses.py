import numpy as np
import pytest

from ganflow.gan import value_function
from ganflow_plugins.losses import MinimaxLoss, NonSaturatingLoss

REAL = np.array([[-2.0], [0.0], [3.0]], dtype=np.float32)
FAKE = np.array([[-1.5], [0.5], [4.0]], dtype=np.float32)


def log_d(s):
    return np.log(1.0 / (1.0 + np.exp(-s.astype(np.float64))))


def log_1m_d(s):
    return np.log(1.0 - 1.0 / (1.0 + np.exp(-s.astype(np.float64))))


@pytest.mark.parametrize("loss", [MinimaxLoss(), NonSaturatingLoss()])
def test_discriminator_loss_is_minus_v(loss):
    expected = -(log_d(REAL).mean() + log_1m_d(FAKE).mean())
    assert float(loss.discriminator_loss(REAL, FAKE)) == pytest.approx(expected, rel=1e-6)


def test_minimax_generator_loss_is_log_one_minus_d():
    assert float(MinimaxLoss().generator_loss(FAKE)) == pytest.approx(
        log_1m_d(FAKE).mean(), rel=1e-6
    )


def test_non_saturating_generator_loss_is_minus_log_d():
    assert float(NonSaturatingLoss().generator_loss(FAKE)) == pytest.approx(
        -log_d(FAKE).mean(), rel=1e-6
    )


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
    assert float(MinimaxLoss().discriminator_loss(real, fake)) == pytest.approx(0.0, abs=1e-6)
    assert float(NonSaturatingLoss().generator_loss(fake)) == pytest.approx(100.0, rel=1e-6)
    assert float(MinimaxLoss().generator_loss(fake)) == pytest.approx(0.0, abs=1e-6)
