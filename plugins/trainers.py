"""Trainers: ``gan``, the k:1 alternation of the lecture (the default), and ``mle``, the
maximum-likelihood baseline: an architecture's density fitted at once (``--arch gmm``)."""

import ganflow


class GANTrainer:
    """k discriminator updates, then one generator update: ``ganflow.GAN`` as it is."""

    def build(self, setup):
        return ganflow.GAN.from_setup(setup)


class MaximumLikelihood:
    """Fit P_G by maximum likelihood: the architecture's ``fit(source, seed)``."""

    def fit_density(self, setup):
        return setup.fit()


@ganflow.hookimpl
def ganflow_register_trainers(register):
    register("gan", GANTrainer(), "k discriminator updates, then one generator update")
    register("mle", MaximumLikelihood(), "fit the architecture's density by maximum likelihood")
