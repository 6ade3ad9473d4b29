"""Training-step speed against the references: ganflow's ``GAN.train_step``, a plain Keras
``train_step`` in the keras.io style, and (with PyTorch installed) the same networks in a plain
PyTorch loop; per precision and XLA setting.

    python bench/bench_speed.py                      # float32 and mixed_bfloat16, XLA off, on
    python bench/bench_speed.py --precision float32 --jit off --rounds 7 --steps 20
    pip install torch==2.13.0                        # optional: adds the PyTorch rows

The networks are the TensorFlow DCGAN tutorial's (28x28: noise 100 -> 7x7x256 -> 7x7x128 ->
14x14x64 -> 28x28x1 with BatchNorm and LeakyReLU; D: 5x5 stride-2 convolutions of 64 and 128
channels, LeakyReLU and dropout 0.3, one logit), batch 256 as in the tutorial, Adam 1e-4 for
both, and the same algorithm everywhere: one D update on m fresh real and m fresh fake
examples (the non-saturating loss, from logits), then one G update on m fresh noise. The real
data are random images in [-1, 1] in a cached tf.data pipeline (a step costs the same whatever
the pixels are); PyTorch indexes a tensor of them.

Every variant is warmed up first (tracing, XLA compilation), then timed in --rounds rounds of
--steps steps, the variants taking turns within each round, so that a change in this VM's
share of the CPU hits them alike. Reported per variant: real images per second of wall time
and per CPU-second (``time.process_time``: all of the process's threads), median (min-max),
and each median's ratio to the keras-style float32 step's, measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

LATENT = 100
DATA = 20_000


def tutorial_generator(layers, keras):
    return keras.Sequential([
        keras.Input((LATENT,)),
        layers.Dense(7 * 7 * 256, use_bias=False), layers.BatchNormalization(),
        layers.LeakyReLU(0.3), layers.Reshape((7, 7, 256)),
        layers.Conv2DTranspose(128, 5, strides=1, padding="same", use_bias=False),
        layers.BatchNormalization(), layers.LeakyReLU(0.3),
        layers.Conv2DTranspose(64, 5, strides=2, padding="same", use_bias=False),
        layers.BatchNormalization(), layers.LeakyReLU(0.3),
        layers.Conv2DTranspose(1, 5, strides=2, padding="same", use_bias=False),
        layers.Activation("tanh", dtype="float32"),
    ], name="generator")


def tutorial_discriminator(layers, keras):
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(64, 5, strides=2, padding="same"), layers.LeakyReLU(0.3),
        layers.Dropout(0.3),
        layers.Conv2D(128, 5, strides=2, padding="same"), layers.LeakyReLU(0.3),
        layers.Dropout(0.3),
        layers.Flatten(), layers.Dense(1, dtype="float32"),
    ], name="discriminator")


def keras_style_model():
    """The keras.io DCGAN example's shape (``dcgan_overriding_train_step.py``): fakes made
    outside the tape, D on real and fake concatenated, binary cross-entropy on logits."""
    import keras
    import tensorflow as tf
    from keras import layers, ops

    class KerasGAN(keras.Model):
        def __init__(self):
            super().__init__()
            self.generator = tutorial_generator(layers, keras)
            self.discriminator = tutorial_discriminator(layers, keras)
            self.seed_generator = keras.random.SeedGenerator(0)
            self.bce = keras.losses.BinaryCrossentropy(from_logits=True)
            self.d_tracker = keras.metrics.Mean(name="d_loss")
            self.g_tracker = keras.metrics.Mean(name="g_loss")

        def compile(self, d_optimizer, g_optimizer, **kwargs):
            super().compile(**kwargs)
            self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer
            d_optimizer.build(self.discriminator.trainable_variables)
            g_optimizer.build(self.generator.trainable_variables)

        @property
        def metrics(self):
            return [self.d_tracker, self.g_tracker]

        def train_step(self, real):
            m = ops.shape(real)[0]
            z = keras.random.normal((m, LATENT), seed=self.seed_generator)
            fake = self.generator(z, training=True)
            images = ops.concatenate([real, ops.cast(fake, real.dtype)], axis=0)
            labels = ops.concatenate([ops.ones((m, 1)), ops.zeros((m, 1))], axis=0)
            with tf.GradientTape() as tape:
                d_loss = self.bce(labels, self.discriminator(images, training=True))
            grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
            self.d_optimizer.apply_gradients(zip(grads, self.discriminator.trainable_weights))
            z = keras.random.normal((m, LATENT), seed=self.seed_generator)
            with tf.GradientTape() as tape:
                logits = self.discriminator(self.generator(z, training=True), training=True)
                g_loss = self.bce(ops.ones((m, 1)), logits)
            grads = tape.gradient(g_loss, self.generator.trainable_weights)
            self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_weights))
            self.d_tracker.update_state(d_loss)
            self.g_tracker.update_state(g_loss)
            return {"d_loss": self.d_tracker.result(), "g_loss": self.g_tracker.result()}

        def call(self, z):
            return self.generator(z)

    return KerasGAN()


def ganflow_model():
    import keras
    from keras import layers

    import ganflow
    from ganflow.plugins import load_plugins

    loss = load_plugins().losses.get("non-saturating").obj
    return ganflow.GAN(tutorial_generator(layers, keras), tutorial_discriminator(layers, keras),
                       latent_dim=LATENT, seed=0), loss


def pipeline(batch_size: int):
    """Random images in [-1, 1], cached, shuffled, batched: a step costs the same whatever
    the pixels are."""
    import numpy as np
    import tensorflow as tf

    images = np.random.default_rng(0).uniform(-1, 1, (DATA, 28, 28, 1)).astype("float32")
    return (tf.data.Dataset.from_tensor_slices(images).cache().shuffle(DATA, seed=0)
            .repeat().batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))


class KerasVariant:
    """A Keras model's compiled training step (the function ``fit`` calls each step), run on
    one iterator of the pipeline: no per-call setup of ``fit`` is timed."""

    def __init__(self, kind: str, precision: str, jit: bool, pipeline):
        import keras

        from ganflow.devices import dtype_policy

        with dtype_policy(precision):
            if kind == "ganflow":
                self.model, loss = ganflow_model()
                self.model.compile(keras.optimizers.Adam(1e-4), keras.optimizers.Adam(1e-4),
                                   loss, jit_compile=jit)
            else:
                self.model = keras_style_model()
                self.model.compile(keras.optimizers.Adam(1e-4), keras.optimizers.Adam(1e-4),
                                   jit_compile=jit)

        self.model.make_train_function()
        self.function = self.model.train_function
        self.iterator = iter(pipeline)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            logs = self.function(self.iterator)
        logs = logs.get_value() if hasattr(logs, "get_value") else logs
        float(logs["d_loss"])  # waits for the last step to finish


class TorchVariant:
    """The same networks, algorithm and batch in a plain PyTorch loop."""

    def __init__(self, precision: str, batch: int):
        import torch
        from torch import nn

        torch.manual_seed(0)
        self.torch, self.batch = torch, batch
        self.autocast = precision == "mixed_bfloat16"
        self.generator = nn.Sequential(
            nn.Linear(LATENT, 7 * 7 * 256, bias=False), nn.BatchNorm1d(7 * 7 * 256),
            nn.LeakyReLU(0.3), nn.Unflatten(1, (256, 7, 7)),
            nn.ConvTranspose2d(256, 128, 5, 1, 2, bias=False), nn.BatchNorm2d(128),
            nn.LeakyReLU(0.3),
            nn.ConvTranspose2d(128, 64, 5, 2, 2, output_padding=1, bias=False),
            nn.BatchNorm2d(64), nn.LeakyReLU(0.3),
            nn.ConvTranspose2d(64, 1, 5, 2, 2, output_padding=1, bias=False), nn.Tanh())
        self.discriminator = nn.Sequential(
            nn.Conv2d(1, 64, 5, 2, 2), nn.LeakyReLU(0.3), nn.Dropout(0.3),
            nn.Conv2d(64, 128, 5, 2, 2), nn.LeakyReLU(0.3), nn.Dropout(0.3),
            nn.Flatten(), nn.Linear(7 * 7 * 128, 1))
        self.g_opt = torch.optim.Adam(self.generator.parameters(), 1e-4)
        self.d_opt = torch.optim.Adam(self.discriminator.parameters(), 1e-4)
        self.data = torch.rand(DATA, 1, 28, 28) * 2 - 1
        self.bce = nn.BCEWithLogitsLoss()

    def run(self, steps: int) -> None:
        torch, m = self.torch, self.batch
        ones, zeros = torch.ones(m, 1), torch.zeros(m, 1)
        for _ in range(steps):
            real = self.data[torch.randint(0, DATA, (m,))]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
                with torch.no_grad():
                    fake = self.generator(torch.randn(m, LATENT))
                d_loss = self.bce(self.discriminator(real), ones) + \
                    self.bce(self.discriminator(fake), zeros)
            self.d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.d_opt.step()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
                g_loss = self.bce(self.discriminator(self.generator(torch.randn(m, LATENT))),
                                  ones)
            self.g_opt.zero_grad(set_to_none=True)
            g_loss.backward()
            self.g_opt.step()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8, help="steps per timed round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", nargs="+", default=["float32", "mixed_bfloat16"],
                        choices=["float32", "mixed_bfloat16"])
    parser.add_argument("--jit", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from ganflow.devices import resolve_precision

    keras.utils.set_random_seed(0)
    data = pipeline(args.batch_size)
    variants = {}
    for precision in args.precision:
        for jit in args.jit:
            for kind in ("keras-style", "ganflow"):
                variants[(kind, precision, f"xla {jit}")] = KerasVariant(
                    kind, precision, jit == "on", data)
    torch_version = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            pass
        else:
            torch_version = torch.__version__
            for precision in args.precision:
                variants[("pytorch", precision, "eager")] = TorchVariant(precision,
                                                                         args.batch_size)
    for variant in variants.values():
        variant.run(args.warmup)

    wall = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, variant in variants.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            variant.run(args.steps)
            images_done = args.steps * args.batch_size
            wall[name].append(images_done / (time.perf_counter() - started))
            cpu[name].append(images_done / (time.process_time() - started_cpu))

    print(f"batch {args.batch_size}, {args.rounds} rounds of {args.steps} steps after "
          f"{args.warmup} warm-up steps; tensorflow {tf.__version__}, keras {keras.__version__}"
          f"{', torch ' + torch_version if torch_version else ''}; {os.cpu_count()} CPUs")
    base = ("keras-style", "float32", "xla off")
    # ganflow's step at the dcgan recipe's settings for this machine: `--precision auto`, and
    # `--jit auto`, which Keras turns on for a GPU only.
    jit_auto = "xla on" if tf.config.list_physical_devices("GPU") else "xla off"
    default = ("ganflow", resolve_precision("auto"), jit_auto)
    print("| step | precision | XLA | img/s (wall) | ratio | img/CPU-s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name in variants:
        kind, precision, jit = name
        w, c = wall[name], cpu[name]
        ratio_w = statistics.median(w) / statistics.median(wall[base]) if base in wall else 0
        ratio_c = statistics.median(c) / statistics.median(cpu[base]) if base in cpu else 0
        label = f"**{kind} (the default)**" if name == default else kind
        print(f"| {label} | {precision} | {jit} | {statistics.median(w):.0f} "
              f"({min(w):.0f}-{max(w):.0f}) | {ratio_w:.2f} | {statistics.median(c):.0f} "
              f"({min(c):.0f}-{max(c):.0f}) | {ratio_c:.2f} |")
    if default not in variants:
        return
    for reference in (base, ("pytorch", "float32", "eager")):
        if reference not in variants:
            continue
        ratios = [statistics.median(times[default]) / statistics.median(times[reference])
                  for times in (wall, cpu)]
        print(f"ganflow's default ({default[1]}, {default[2]}) against {reference[0]} float32: "
              f"{ratios[0]:.2f}x in wall time, {ratios[1]:.2f}x per CPU-second")


if __name__ == "__main__":
    main()
