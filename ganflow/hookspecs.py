"""Every ganflow hook. Each docstring is that hook's documentation.

A plugin is a module (or object) with functions decorated by ``ganflow.hookimpl`` and named
after these hooks. It is found through the ``ganflow`` entry-point group of an installed
package, or given with ``ganflow run --plugin-module PATH_OR_MODULE``. The built-in plugins
(``ganflow_plugins``) are loaded the same way, by name.

All hooks below run once, when the plugins are loaded, in the order the plugins were loaded
(built-ins, then entry points, then ``--plugin-module``). Each receives a ``register`` callback;
a name registered twice is an error that names both plugins.
"""

import pluggy

hookspec = pluggy.HookspecMarker("ganflow")


@hookspec
def ganflow_register_losses(register):
    """Register GAN objectives: ``register(name, loss, description="")``.

    ``loss`` is a ``ganflow.Loss`` (or any object with its methods), working on the
    discriminator's logits: ``discriminator_loss(real_logits, fake_logits)`` and
    ``generator_loss(fake_logits)`` each return a scalar to minimize; the optional
    ``penalty(discriminator, real, fake)`` adds a scalar to each discriminator update.
    Selected with ``ganflow run --loss NAME``.
    """


@hookspec
def ganflow_register_datasets(register):
    """Register datasets: ``register(name, loader, description="", argument=None,
    argument_optional=False)``.

    ``loader(options: ganflow.DatasetOptions) -> ganflow.DataSource``. It is called only when
    the dataset is used, so it may be slow (read files, prepare tfds). If the dataset takes an
    argument (``--dataset folder:PATH``), pass ``argument="PATH"`` (the placeholder shown in
    help and errors); ``options.argument`` then holds the user's value. With
    ``argument_optional=True`` it may be left out (``options.argument`` is then None). A toy
    dataset with a known density sets ``DataSource(density=ganflow.Mixture(...))``. Raise
    ``ganflow.UsageError`` with a message that says what to do when the data is not there.
    """


@hookspec
def ganflow_register_architectures(register):
    """Register network pairs: ``register(name, architecture, description="", argument=None,
    argument_optional=False)``.

    ``architecture.build_generator(spec, latent_dim)`` returns a keras.Model mapping
    (batch, latent_dim) to (batch, *spec.shape); ``architecture.build_discriminator(spec)``
    one mapping (batch, *spec.shape) to (batch, 1) logits. ``spec`` is a ``ganflow.DataSpec``.
    Selected with ``ganflow run --arch NAME``.

    With ``argument="SIZES"`` the registered object is a factory instead, called with the
    user's argument (``--arch mlp:256,256`` gives ``"256,256"``; None when an optional
    argument is left out) and returning the architecture.

    An architecture fitted by maximum likelihood instead of adversarially (the built-in
    ``gmm``) has ``fit(examples, seed) -> ganflow.FittedDensity``; ``ganflow run`` then fits,
    evaluates and registers its sampler in place of training a GAN.
    """


@hookspec
def ganflow_register_recipes(register):
    """Register recipes: ``register(name, defaults, description="")``.

    ``defaults`` is a dict of ``ganflow run`` settings by their config names (``arch``,
    ``loss``, ``dataset``, ``epochs``, ``batch_size``, ``d_steps``, ``latent_dim``, ``lr_g``,
    ``lr_d``, ``beta1``, ...; ``ganflow run --help`` lists them all). Selected with
    ``ganflow run --plugin NAME``; a config file and flags override any default.
    """


@hookspec
def ganflow_register_feature_extractors(register):
    """Register feature extractors for sample-quality metrics: ``register(name, factory,
    description="")``.

    ``factory(options: ganflow.FeatureOptions) -> ganflow.FeatureExtractor`` is called when
    an evaluation starts, with the dataset the samples are compared with. FID, KID and
    precision/recall are computed on the features; class coverage and the class histogram's
    KL on the predicted classes, when the extractor gives them and the data has labels. Raise
    ``ganflow.UsageError`` when the extractor cannot serve this dataset (unlabelled data for a
    classifier, weights that are not there). Selected with ``--features NAME``.
    """
