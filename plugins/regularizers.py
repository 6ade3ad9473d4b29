"""Regularizers: R1, R2 and the gradient penalty on D's gradient; orthogonality of G's
kernels.

- R1 = gamma / 2 * E_data[||grad_x D(x)||^2] penalizes D's gradient on real data, R2 the same on
  generated data (Mescheder et al. 2018): both push D towards the equilibrium where it is flat
  on the data. ``--regularizer r1:gamma=10``; ``every=16`` makes it lazy (StyleGAN2's schedule:
  every 16th D update, times 16).
- gp = weight * E[(||grad D(x_hat)|| - 1)^2] at x_hat = alpha x + (1 - alpha) G(z), alpha
  uniform in [0, 1] per example (Gulrajani et al. 2017, WGAN-GP); one-sided, only norms above
  1 are penalized: max(0, ||grad|| - 1)^2 (Petzka et al. 2018). The ``wgan`` loss has it built
  in; ``--regularizer gp`` adds it to any other loss (Fedus et al. 2018).

Gradients are of D's logit, taken with D as the update calls it (training mode).

- orthogonal = beta / 2 * sum_W ||W W^T * (1 - I)||_F^2 over G's kernels, each W a kernel's
  filters as rows (Brock et al. 2019, BigGAN's variant: only the filters' cosines, not their
  norms); its gradient, 2 beta (W W^T * (1 - I)) W, is the update BigGAN adds. On G:
  ``--regularizer orthogonal:beta=1e-4``.
"""

import keras
from keras import ops

import ganflow


def gradient_norm_squared(step, examples):
    """||grad_x s(x)||^2 per example, s = D's logit: (m,), float32."""
    import tensorflow as tf

    examples = ops.stop_gradient(examples)
    with tf.GradientTape() as tape:
        tape.watch(examples)
        logits = step.discriminate(examples)
    # The gradient of the logits is that of their sum: each example's own, as they are separate.
    gradient = ops.cast(tape.gradient(logits, examples), "float32")
    return ops.sum(ops.reshape(ops.square(gradient), (ops.shape(gradient)[0], -1)), axis=1)


def gradient_penalty(step, one_sided=False):
    """E[(||grad D(x_hat)|| - 1)^2] (or of max(0, ||grad|| - 1)) at random interpolates of the
    step's real and fake examples, float32."""
    real, fake = ops.cast(step.real, "float32"), ops.cast(step.fake, "float32")
    shape = (ops.shape(real)[0],) + (1,) * (len(real.shape) - 1)
    alpha = keras.random.uniform(shape, seed=step.seed_generator)
    interpolates = ops.cast(alpha * real + (1.0 - alpha) * fake, step.real.dtype)
    norm = ops.sqrt(gradient_norm_squared(step, interpolates) + 1e-12)
    excess = ops.relu(norm - 1.0) if one_sided else norm - 1.0
    return ops.mean(ops.square(excess))


SIDES = ("two-sided", "one-sided")


class GradientPenalty(ganflow.Regularizer):
    """weight * E[(||grad D(x_hat)|| - 1)^2] at interpolates (one-sided: only norms above 1)."""

    def __init__(self, weight, sides):
        self.weight = weight
        self.one_sided = sides == "one-sided"

    def __call__(self, step):
        return self.weight * gradient_penalty(step, self.one_sided)


class R1(ganflow.Regularizer):
    """gamma / 2 * E_data[||grad D(x)||^2]."""

    def __init__(self, gamma):
        self.gamma = gamma

    def __call__(self, step):
        return 0.5 * self.gamma * ops.mean(gradient_norm_squared(step, step.real))


class R2(R1):
    """gamma / 2 * E_G[||grad D(G(z))||^2]."""

    def __call__(self, step):
        return 0.5 * self.gamma * ops.mean(gradient_norm_squared(step, step.fake))


class Orthogonal(ganflow.Regularizer):
    """beta / 2 * sum over G's kernels of ||W W^T * (1 - I)||_F^2, W: (filters, fan-in)."""

    network = "generator"

    def __init__(self, beta):
        self.beta = beta

    def __call__(self, step):
        total = 0.0
        for variable in step.generator.trainable_weights:
            if not variable.path.endswith("kernel") or len(variable.shape) < 2:
                continue  # biases, BatchNorm's and embeddings' weights are left alone
            w = ops.reshape(ops.cast(variable, "float32"), (-1, variable.shape[-1]))
            gram = ops.matmul(ops.transpose(w), w)  # (filters, filters)
            off_diagonal = gram * (1.0 - ops.eye(variable.shape[-1]))
            total = total + ops.sum(ops.square(off_diagonal))
        return 0.5 * self.beta * total


GAMMA = {"gamma": ganflow.Setting(10.0, "the penalty's weight", minimum=0.0)}
PENALTY = {
    "weight": ganflow.Setting(10.0, "the penalty's weight (WGAN-GP's lambda)", minimum=0.0),
    "sides": ganflow.Setting("two-sided", "two-sided: (||grad|| - 1)^2; one-sided: only "
                             "norms above 1", choices=SIDES),
}


@ganflow.hookimpl
def ganflow_register_regularizers(register):
    register("r1", R1, "gamma/2 E_data ||grad D(x)||^2 on real data (Mescheder et al. 2018)",
             settings=GAMMA)
    register("r2", R2, "gamma/2 E_G ||grad D(G(z))||^2 on generated data", settings=GAMMA)
    register("orthogonal", Orthogonal, "on G: beta/2 sum ||W W^T (1 - I)||^2 over its "
             "kernels, BigGAN's orthogonal regularization",
             settings={"beta": ganflow.Setting(1e-4, "the penalty's weight", minimum=0.0)})
    register("gp", GradientPenalty, "weight E(||grad D(x_hat)|| - 1)^2 at real/fake "
             "interpolates (WGAN-GP)", settings=PENALTY)
