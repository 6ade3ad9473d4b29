"""Optimizers (``--optimizer``, ``--g-optimizer``, ``--d-optimizer``) and learning-rate
schedules (``--lr-schedule``), as Keras makes them.

Adam's beta1 defaults to 0.5, not Keras's 0.9: the DCGAN paper's choice, which most GAN
recipes keep.
"""

import ganflow
from ganflow import Setting


def adam(learning_rate, beta1, beta2, epsilon, amsgrad):
    import keras

    return keras.optimizers.Adam(learning_rate, beta_1=beta1, beta_2=beta2, epsilon=epsilon,
                                 amsgrad=amsgrad)


def adamw(learning_rate, beta1, beta2, epsilon, weight_decay):
    import keras

    return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay, beta_1=beta1,
                                  beta_2=beta2, epsilon=epsilon)


def rmsprop(learning_rate, rho, momentum, epsilon):
    import keras

    return keras.optimizers.RMSprop(learning_rate, rho=rho, momentum=momentum, epsilon=epsilon)


def sgd(learning_rate, momentum, nesterov):
    import keras

    return keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=nesterov)


BETAS = {
    "beta1": Setting(0.5, "decay of the first-moment average", minimum=0.0, maximum=1.0,
                     below=True),
    "beta2": Setting(0.999, "decay of the second-moment average", minimum=0.0, maximum=1.0,
                     below=True),
    "epsilon": Setting(1e-7, "added to the denominator", minimum=0.0),
}


@ganflow.hookimpl
def ganflow_register_optimizers(register):
    register("adam", adam, "Adam (Kingma & Ba 2014)",
             settings={**BETAS, "amsgrad": Setting(False, "use the AMSGrad variant")})
    register("adamw", adamw, "Adam with decoupled weight decay (Loshchilov & Hutter 2017)",
             settings={**BETAS, "weight_decay": Setting(0.004, "decoupled weight decay",
                                                        minimum=0.0)})
    register("rmsprop", rmsprop, "RMSprop (the WGAN paper's optimizer)",
             settings={"rho": Setting(0.9, "decay of the squared-gradient average", minimum=0.0,
                                      maximum=1.0, below=True),
                       "momentum": Setting(0.0, "momentum", minimum=0.0, maximum=1.0,
                                           below=True),
                       "epsilon": Setting(1e-7, "added to the denominator", minimum=0.0)})
    register("sgd", sgd, "stochastic gradient descent, the lecture's gradient steps",
             settings={"momentum": Setting(0.0, "momentum", minimum=0.0, maximum=1.0,
                                           below=True),
                       "nesterov": Setting(False, "Nesterov momentum")})


def constant(learning_rate, total_steps):
    return learning_rate


def linear(learning_rate, total_steps, end, warmup):
    import keras

    decay = keras.optimizers.schedules.PolynomialDecay(
        learning_rate, max(1, total_steps - warmup), end_learning_rate=end * learning_rate,
        power=1.0)
    return _warmed_up(decay, learning_rate, warmup)


def cosine(learning_rate, total_steps, end, warmup):
    import keras

    if warmup:
        return keras.optimizers.schedules.CosineDecay(
            0.0, max(1, total_steps - warmup), alpha=end, warmup_target=learning_rate,
            warmup_steps=warmup)
    return keras.optimizers.schedules.CosineDecay(learning_rate, max(1, total_steps), alpha=end)


def _warmed_up(schedule, learning_rate, warmup):
    """``schedule`` after a linear warm-up from 0 over ``warmup`` updates."""
    if not warmup:
        return schedule
    import keras
    from keras import ops

    class WarmUp(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = ops.cast(step, "float32")
            ramp = learning_rate * step / warmup
            return ops.where(step < warmup, ramp, schedule(step - warmup))

        def get_config(self):
            return {"warmup": warmup, "learning_rate": learning_rate}

    return WarmUp()


DECAY = {
    "end": Setting(0.0, "the rate at the end, as a fraction of the initial rate", minimum=0.0,
                   maximum=1.0),
    "warmup": Setting(0, "updates of linear warm-up from 0 first", minimum=0),
}


@ganflow.hookimpl
def ganflow_register_schedules(register):
    register("constant", constant, "the same rate throughout")
    register("linear", linear, "linear decay to end x rate over the run", settings=DECAY)
    register("cosine", cosine, "cosine decay to end x rate over the run", settings=DECAY)
