"""Trainers: ``gan``, the k:1 alternation of the lecture (the default), and ``mle``, the
maximum-likelihood baseline: an architecture's density fitted at once (``--arch gmm``)."""

import ganflow


class GANTrainer:
    """k discriminator updates, then one generator update: ``ganflow.GAN`` as it is."""

    def build(self, setup):
        generator, discriminator = setup.networks()
        gan = ganflow.GAN(generator, discriminator, setup.latent_dim, setup.d_steps,
                          seed=setup.seed, ema=setup.ema, num_classes=setup.num_classes,
                          conditional=setup.conditional, augment=setup.augment)
        gan.compile(
            d_optimizer=setup.optimizer("discriminator"),
            g_optimizer=setup.optimizer("generator"),
            loss=setup.loss,
            regularizers=setup.regularizers,
            jit_compile=setup.jit_compile,
        )
        return gan


class MaximumLikelihood:
    """Fit P_G by maximum likelihood: the architecture's ``fit(source, seed)``."""

    def fit_density(self, setup):
        if not callable(getattr(setup.architecture, "fit", None)):
            arch = setup.names.get("arch", type(setup.architecture).__name__)
            raise ganflow.UsageError(
                f"trainer mle fits a density by maximum likelihood, and architecture {arch} "
                "has none (it has networks): use --arch gmm[:K], or --trainer gan")
        return setup.architecture.fit(setup.source, setup.seed)


@ganflow.hookimpl
def ganflow_register_trainers(register):
    register("gan", GANTrainer(), "k discriminator updates, then one generator update")
    register("mle", MaximumLikelihood(), "fit the architecture's density by maximum likelihood")
