"""Every ganflow hook. Each docstring is that hook's documentation.

A plugin is a module (or object) with functions decorated by ``ganflow.hookimpl`` and named
after these hooks. It is found through the ``ganflow`` entry-point group of an installed
package, or given with ``ganflow run --plugin-module PATH_OR_MODULE``. The built-in plugins
(``ganflow_plugins``) are loaded the same way, by name.

All hooks below run once, when the plugins are loaded, in the order the plugins were loaded
(built-ins, then entry points, then ``--plugin-module``). Each receives a ``register``
callback; what is registered is checked then, and a name registered twice is an error that
names both plugins. A function named like a hook but not decorated is refused, not ignored.

Settings: the hooks marked so take ``register(..., settings={"key": ganflow.Setting(default,
help)})``. The registered object is then a factory, called with every setting by keyword;
users give them as ``NAME:key=value,...`` (``--loss wgan:gp=5``), each value is checked
against its declaration before anything starts, ``ganflow plugins`` lists them, and each
becomes an MLflow param (``loss.gp``).

Each hook registers one kind of plugin; ``ganflow.kinds.KINDS`` is the table of kinds (which
hook, which registry, how a run's settings name one), so a new kind is a hook here and one
entry there.

State: a loss, regularizer or augmentation object may keep state across training steps (ADA's
augmentation probability, a LeCam regularizer's moving averages). It creates its
``keras.Variable``s when it is built (the engine builds plugin objects in the tf.distribute
strategy's scope, so they exist on every replica) and lists them as ``state``, a dict of names
to variables: the engine checkpoints them and restores them with the run. It may also have
``observe(step)``, called inside the traced training step after every discriminator update
with that update's ``ganflow.Step``, to update them; every replica calls it, so sum a
statistic over the global batch with ``ganflow.replica_sum`` and give each variable
``aggregation="only_first_replica"``: every replica then computes the same value and keeps
it. ``metrics(step)``, a dict of scalars, logs it like a loss's metrics (``ada/p``).

Errors: raise ``ganflow.UsageError`` for a user's mistake (a one-line message, exit code 2).
Any other exception from a plugin's code becomes a one-line error naming the plugin and what
it was doing (exit code 1; ``ganflow --debug`` shows the traceback).
"""

import pluggy

hookspec = pluggy.HookspecMarker("ganflow")


@hookspec
def ganflow_register_losses(register):
    """Register GAN objectives: ``register(name, loss, description="", settings=None)``.

    A ``ganflow.StepLoss`` has ``d_loss(step)`` and ``g_loss(step)``, each returning the scalar
    its network minimizes, and optionally ``metrics(step)``, a dict of scalars to log (called
    on the last discriminator update of each training step). ``step`` is a ``ganflow.Step``
    (its docstring lists what it holds: the update, the real examples and labels, ``z``, the
    fakes, both networks, both logits). In the generator update the real examples are there
    only if the loss sets ``generator_uses_real = True``: each step then draws m more fresh
    examples.

    The short way, ``ganflow.Loss``: ``discriminator_loss(real_logits, fake_logits)`` and
    ``generator_loss(fake_logits)``, on D's logits; ganflow adapts it to the step. (Its old
    ``penalty(discriminator, real, fake)`` still runs, as the regularizer ``penalty``, with a
    ``ganflow.GanflowDeprecationWarning``: write a regularizer instead.)

    Losses run inside the traced training step (``ganflow.step`` says what that means for a
    plugin). The logged ``d_loss`` and ``g_loss`` are the totals each network minimizes,
    regularizers included. Before training, each loss is tried once on a batch of
    ``ganflow.gan.PROBE_BATCH`` zeros; a loss that returns a vector instead of a scalar, or
    fails, stops the run with its name. Selected with ``--loss NAME[:SETTINGS]``.
    """


@hookspec
def ganflow_register_regularizers(register):
    """Register regularizers: ``register(name, regularizer, description="", settings=None)``.

    A ``ganflow.Regularizer`` is called as ``regularizer(step)`` (a ``ganflow.Step``, as
    losses get it) and returns a scalar added to the loss of the network named by its
    ``network`` attribute ("discriminator", the default, or "generator"). It may open its own
    ``tf.GradientTape`` (e.g. to take D's gradient with respect to its input: R1, gradient
    penalties). Besides its own settings, each takes ``every=N`` from the engine: it then
    runs on every N-th update of its network, multiplied by N (lazy regularization). Its value
    is logged as ``reg/NAME``, the mean over the updates it ran in. Selected with
    ``--regularizer NAME[:SETTINGS]``, repeatable.
    """


@hookspec
def ganflow_register_augmentations(register):
    """Register differentiable augmentations: ``register(name, augmentation, description="",
    settings=None)``.

    ``augmentation(x, seed_generator)`` returns a batch of examples like ``x``, changed at
    random per example (``keras.random.*(..., seed=seed_generator)``) and differentiable in
    ``x``. The run's ``--augment`` chain is applied, in the order given, to every input of D
    while training: real and fake examples, in both updates, and inside regularizers that
    call ``step.discriminate``. An augmentation may keep state (``ada``'s p; see "State"
    above). Selected with ``--augment NAME[:SETTINGS]``, repeatable.
    """


@hookspec
def ganflow_register_trainers(register):
    """Register trainers: ``register(name, trainer, description="", settings=None)``.

    A trainer turns a ``ganflow.TrainingSetup`` (the data spec and source, the architecture,
    the loss and regularizers, latent size, k, seed, EMA, XLA, the run's length, and
    ``setup.networks()`` and ``setup.optimizer(network)`` to build what it needs) into what
    is trained. It has one of:

    - ``build(setup) -> ganflow.GAN``: a compiled ``ganflow.GAN`` or subclass, which
      ``keras.Model.fit`` then trains on batches of ``model.real_per_step(m)`` real examples.
      To change the training step, subclass ``GAN`` and override ``train_step`` with its
      public ``discriminator_update`` and ``generator_update``. The built-in ``gan`` trainer
      (the default) is the k:1 alternation.
    - ``fit_density(setup) -> ganflow.FittedDensity``: a model fitted at once (the built-in
      ``mle``, maximum likelihood), logged and registered like a generator.

    Selected with ``--trainer NAME[:SETTINGS]``.
    """


@hookspec
def ganflow_register_optimizers(register):
    """Register optimizers: ``register(name, factory, description="", settings=None)``.

    ``factory(learning_rate, **settings)`` returns a ``keras.optimizers.Optimizer``;
    ``learning_rate`` is a float or a Keras learning-rate schedule. Selected with
    ``--optimizer NAME[:SETTINGS]`` for both networks, ``--g-optimizer`` and
    ``--d-optimizer`` for one; the rates are ``--lr-g`` and ``--lr-d``.
    """


@hookspec
def ganflow_register_schedules(register):
    """Register learning-rate schedules: ``register(name, factory, description="",
    settings=None)``.

    ``factory(learning_rate, total_steps, **settings)`` returns a float or a
    ``keras.optimizers.schedules.LearningRateSchedule`` from ``learning_rate`` over an
    optimizer's ``total_steps`` updates (each network's own count: k per step for D).
    Selected with ``--lr-schedule NAME[:SETTINGS]``.
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
    argument_optional=False, settings=None)``.

    ``architecture.build_generator(spec, latent_dim)`` returns a keras.Model mapping
    (batch, latent_dim) to (batch, *spec.shape); ``architecture.build_discriminator(spec)``
    one mapping (batch, *spec.shape) to (batch, 1) logits. ``spec`` is a ``ganflow.DataSpec``.
    The engine checks both shapes before training. For conditional runs both take
    ``num_classes=`` (``ganflow.Architecture`` says how). Selected with ``--arch NAME``.

    With ``argument="SIZES"`` the registered object is a factory instead, called with the
    user's argument (``--arch mlp:256,256`` gives ``"256,256"``; None when an optional
    argument is left out) and returning the architecture. With ``settings=`` (see Settings
    above) it is a factory called with them instead (``--arch resnet:width=32,attention=16``),
    each an MLflow param (``arch.width``).

    Layers an architecture's generator needs beyond Keras's own must be registered with
    ``keras.saving.register_keras_serializable`` in a module imported when the model loads:
    ``ganflow.layers`` has the built-in ones (self-attention, ...), loaded with every
    registered generator.

    A model family fitted by maximum likelihood instead (the built-in ``gmm``) has
    ``fit(source, seed) -> ganflow.FittedDensity`` and no networks; the ``mle`` trainer fits it.
    """


@hookspec
def ganflow_register_recipes(register):
    """Register recipes: ``register(name, defaults, description="")``.

    ``defaults`` is a dict of ``ganflow run`` settings by their config names (``arch``,
    ``loss``, ``dataset``, ``epochs``, ``batch_size``, ``d_steps``, ...): ``ganflow settings``
    lists every name with its help. They are checked when the recipe registers. Selected with
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
