"""GAN objectives on a ``ganflow.Step``'s logits: the lecture's two, and the library users
expect (hinge, Wasserstein with a gradient penalty, least squares, relativistic pairing).

The original GAN's two generator objectives:

The discriminator loss is -V(G, D) for both: D ascends V by minimizing it. They differ in G:
- minimax: G minimizes E[log(1 - D(G(z)))] = -E[softplus(s)], exactly the V it plays against.
  Its gradient vanishes while D confidently rejects the fakes, so it starts slowly.
- non-saturating: G minimizes E[-log D(G(z))] = E[softplus(-s)], "label the fakes as real":
  same fixed point, strong gradients early. The default.

Both report the lecture's quantities, which mean what their names say only for these losses:
d_real = mean D(x), d_fake = mean D(G(z)), value = V on the batch and jsd_estimate =
(V + 2 log 2) / 2 (the JSD that V implies if D were optimal).
"""

from keras import ops

import ganflow
from ganflow_plugins.regularizers import PENALTY, gradient_penalty


class MinimaxLoss(ganflow.StepLoss):
    def d_loss(self, step):
        return ops.mean(ops.softplus(-step.real_logits)) + ops.mean(ops.softplus(step.fake_logits))

    def g_loss(self, step):
        return -ops.mean(ops.softplus(step.fake_logits))

    def metrics(self, step):
        value = ganflow.value_function(step.real_logits, step.fake_logits)
        return {
            "d_real": ops.mean(ops.sigmoid(step.real_logits)),
            "d_fake": ops.mean(ops.sigmoid(step.fake_logits)),
            "value": value,
            "jsd_estimate": (value + ganflow.LOG_4) / 2.0,
        }


class NonSaturatingLoss(MinimaxLoss):
    def g_loss(self, step):
        return ops.mean(ops.softplus(-step.fake_logits))


class HingeLoss(ganflow.StepLoss):
    """Hinge loss (Lim & Ye 2017; Miyato et al. 2018): D minimizes E[relu(1 - s(x))] +
    E[relu(1 + s(G(z)))], G minimizes -E[s(G(z))]."""

    def d_loss(self, step):
        return (ops.mean(ops.relu(1.0 - step.real_logits))
                + ops.mean(ops.relu(1.0 + step.fake_logits)))

    def g_loss(self, step):
        return -ops.mean(step.fake_logits)


class WassersteinLoss(ganflow.StepLoss):
    """WGAN (Arjovsky et al. 2017) with a gradient penalty (Gulrajani et al. 2017): the critic
    minimizes E[s(G(z))] - E[s(x)] + gp E[(||grad s(x_hat)|| - 1)^2], G minimizes -E[s(G(z))].
    The logged ``critic_gap`` = E[s(x)] - E[s(G(z))] estimates the Wasserstein-1 distance when
    the critic is 1-Lipschitz, which the penalty encourages; ``gp=0`` leaves it unconstrained."""

    def __init__(self, gp, sides):
        self.gp = gp
        self.one_sided = sides == "one-sided"

    def d_loss(self, step):
        loss = ops.mean(step.fake_logits) - ops.mean(step.real_logits)
        if self.gp:
            loss = loss + self.gp * gradient_penalty(step, self.one_sided)
        return loss

    def g_loss(self, step):
        return -ops.mean(step.fake_logits)

    def metrics(self, step):
        return {"critic_gap": ops.mean(step.real_logits) - ops.mean(step.fake_logits)}


class LeastSquaresLoss(ganflow.StepLoss):
    """Least squares (Mao et al. 2017), a = 0, b = c = 1: D regresses real logits to 1 and
    fakes to 0, G its fakes to 1."""

    def d_loss(self, step):
        return 0.5 * (ops.mean(ops.square(step.real_logits - 1.0))
                      + ops.mean(ops.square(step.fake_logits)))

    def g_loss(self, step):
        return 0.5 * ops.mean(ops.square(step.fake_logits - 1.0))


class RelativisticPairingLoss(ganflow.StepLoss):
    """Relativistic pairing (Jolicoeur-Martineau 2019; RpGAN, the loss of R3GAN, Huang et al.
    2024): each real example is paired with a fake one and D judges which of the two is real.
    D minimizes E[softplus(s(G(z)) - s(x))], G minimizes E[softplus(s(x) - s(G(z)))]. Sun et
    al. (2020) show its landscape has no local minima where G drops modes, which the
    non-saturating loss's has; R3GAN pairs it with R1 and R2. G's update reads D's logits of
    real data, so it draws a batch of real examples too. ``pair_gap`` = E[s(x) - s(G(z))]."""

    generator_uses_real = True

    def d_loss(self, step):
        return ops.mean(ops.softplus(step.fake_logits - step.real_logits))

    def g_loss(self, step):
        return ops.mean(ops.softplus(step.real_logits - step.fake_logits))

    def metrics(self, step):
        return {"pair_gap": ops.mean(step.real_logits - step.fake_logits)}


@ganflow.hookimpl
def ganflow_register_losses(register):
    register("minimax", MinimaxLoss(), "G minimizes E[log(1 - D(G(z)))], the lecture's V")
    register("non-saturating", NonSaturatingLoss(), "G minimizes E[-log D(G(z))]")
    register("hinge", HingeLoss(), "D: E relu(1 - s(x)) + E relu(1 + s(G(z))); G: -E s(G(z))")
    register("wgan", WassersteinLoss, "Wasserstein critic with a gradient penalty (WGAN-GP)",
             settings={"gp": PENALTY["weight"], "sides": PENALTY["sides"]})
    register("lsgan", LeastSquaresLoss(), "least squares: D regresses real to 1, fake to 0")
    register("rpgan", RelativisticPairingLoss(), "relativistic pairing (R3GAN): D: E "
             "softplus(s(G(z)) - s(x)); G: E softplus(s(x) - s(G(z)))")
