"""Gradient regularizers of the discriminator: R1 and R2 (Mescheder et al. 2018).

R1 = gamma / 2 * E_data[||grad_x D(x)||^2] penalizes D's gradient on real data, R2 the same on
generated data; both push D towards the equilibrium where it is flat on the data. Add one with
``--regularizer r1:gamma=10``; ``every=16`` makes it lazy (StyleGAN2's schedule: every 16th D
update, times 16). The gradient is of D's logit, taken with D in training mode.
"""

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


GAMMA = {"gamma": ganflow.Setting(10.0, "the penalty's weight", minimum=0.0)}


@ganflow.hookimpl
def ganflow_register_regularizers(register):
    register("r1", R1, "gamma/2 E_data ||grad D(x)||^2 on real data (Mescheder et al. 2018)",
             settings=GAMMA)
    register("r2", R2, "gamma/2 E_G ||grad D(G(z))||^2 on generated data", settings=GAMMA)
