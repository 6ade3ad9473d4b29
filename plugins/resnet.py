"""ResNet GANs: the ``resnet`` architecture (SNGAN, Miyato et al. 2018; BigGAN, Brock et al.
2019) and the ``sngan`` recipe.

G: z -> a dense layer to a 4x4 map -> residual up-blocks (BatchNorm, ReLU, 2x nearest
upsampling, 3x3 convolution, BatchNorm, ReLU, 3x3 convolution; a 1x1 convolution on the
upsampled shortcut) -> BatchNorm, ReLU, 3x3 convolution, tanh. D: residual down-blocks
(ReLU, 3x3 convolution, ReLU, 3x3 convolution, 2x2 average pooling; the shortcut a 1x1
convolution then pooling), the first one SNGAN's "optimized" block (no ReLU before its first
convolution, the shortcut pooled first), then ReLU, the sum over positions and a dense layer
to one logit. Spectral normalization on every layer of D by default.

Channels are ``width`` times BigGAN's multipliers for the image side (32: 4, 4, 4 in G and
4, 4, 4, 4 in D, so at width 64 G is SNGAN's CIFAR-10 generator and D has 256 channels
where SNGAN's has 128; 64 and 128: BigGAN's). ``depth``
blocks per resolution (the first one resamples); ``attention=SIDE`` adds SAGAN's
self-attention after the blocks at that side, in G and D.

Conditional (``--conditional``): G's BatchNorms are class-conditional (a per-class gain and
bias from embeddings, as SNGAN's and BigGAN's), D a projection discriminator (Miyato &
Koyama 2018): logit = w . phi(x) + embed(y) . phi(x).
"""

from __future__ import annotations

import keras
from keras import layers

import ganflow
from ganflow.layers import GlobalSumPooling2D, SelfAttention, spectral_norm

# Per image side: (G's channels at 4x4, then after each up-block), (D's after each block),
# (whether each D block downsamples), all in units of ``width``: BigGAN's arch tables.
PLANS = {
    32: ((4, 4, 4, 4), (4, 4, 4, 4), (True, True, False, False)),
    64: ((16, 16, 8, 4, 2), (1, 2, 4, 8, 16), (True, True, True, True, False)),
    128: ((16, 16, 8, 4, 2, 1), (1, 2, 4, 8, 16, 16), (True, True, True, True, True, False)),
}
INITIALIZERS = {"glorot": "glorot_uniform", "orthogonal": "orthogonal"}

SETTINGS = {
    "width": ganflow.Setting(16, "channels unit: each block has width times BigGAN's "
                             "multiplier (SNGAN's CIFAR-10 G is width 64)", minimum=1),
    "depth": ganflow.Setting(1, "residual blocks per resolution (the first one resamples)",
                             minimum=1),
    "sn": ganflow.Setting(True, "spectral normalization on every layer of D"),
    "sigma_grad": ganflow.Setting(True, "spectral norm as the paper's reparametrization "
                                  "(differentiated through sigma(W)); false: Keras's update "
                                  "(W/sigma(W) written back into W)"),
    "g_sn": ganflow.Setting(False, "spectral normalization on G's convolutions and dense "
                            "layer too (BigGAN)"),
    "attention": ganflow.Setting(0, "add self-attention (SAGAN) after the blocks at this "
                                 "side, in G and D (0: none)", minimum=0),
    "init": ganflow.Setting("glorot", "weight initialisation: glorot (Keras's default, as "
                            "SNGAN) or orthogonal (BigGAN)", choices=tuple(INITIALIZERS)),
    "shared": ganflow.Setting(0, "conditional runs: one class embedding of this size shared "
                              "by G's BatchNorms, each taking its gain and bias from it by a "
                              "dense layer (BigGAN); 0: a gain and bias per class in each",
                              minimum=0),
    "hierarchical": ganflow.Setting(False, "split z into one chunk for the 4x4 map and one per "
                                    "resolution, given to that resolution's BatchNorms "
                                    "(BigGAN's hierarchical latent)"),
}


class ResNet:
    def __init__(self, width=16, depth=1, sn=True, sigma_grad=True, g_sn=False, attention=0,
                 init="glorot",
                 shared=0, hierarchical=False):
        self.width, self.depth, self.attention = width, depth, attention
        self.d_sn, self.g_sn, self.sigma_grad = sn, g_sn, sigma_grad
        self.init = INITIALIZERS[init]
        self.shared, self.hierarchical = shared, hierarchical

    # -- the pieces -------------------------------------------------------------------------

    def _plan(self, spec: ganflow.DataSpec):
        if not spec.is_image:
            raise ganflow.UsageError(
                f"architecture resnet needs images (height, width, channels); the dataset's "
                f"examples have shape {spec.shape}: use an architecture for points")
        side, other, _ = spec.shape
        if side != other or side not in PLANS:
            raise ganflow.UsageError(
                f"architecture resnet needs square images of side 32, 64 or 128, got "
                f"{side}x{other}: pass --image-size 32 (or 64, 128)")
        if self.attention and (self.attention not in (8, 16, 32, 64) or self.attention >= side):
            raise ganflow.UsageError(
                f"--arch resnet:attention={self.attention}: the side of a feature map where "
                f"attention goes, a power of 2 from 8 to {side // 2} (or 0 for none)")
        return PLANS[side]

    def _conv(self, filters, size, sn, **kwargs):
        layer = layers.Conv2D(filters, size, padding="same", kernel_initializer=self.init,
                              **kwargs)
        return spectral_norm(layer, sn, self.sigma_grad)

    def _dense(self, units, sn, **kwargs):
        layer = layers.Dense(units, kernel_initializer=self.init, **kwargs)
        return spectral_norm(layer, sn, self.sigma_grad)

    def _norm(self, x, condition, num_classes=None):
        """BatchNorm, conditional on ``condition``: None (plain), integer labels (a gain and a
        bias per class, from embeddings: SNGAN) or a vector per example (gain and bias from
        dense layers: BigGAN's shared embedding and latent chunk)."""
        synchronized = ganflow.replicas() > 1  # the global batch's statistics
        if condition is None:
            return layers.BatchNormalization(synchronized=synchronized)(x)
        x = layers.BatchNormalization(synchronized=synchronized, center=False, scale=False)(x)
        channels = x.shape[-1]
        if "int" in str(condition.dtype):
            gain = layers.Embedding(num_classes, channels,
                                    embeddings_initializer="ones")(condition)
            bias = layers.Embedding(num_classes, channels,
                                    embeddings_initializer="zeros")(condition)
        else:  # the gain's dense layer starts at 1: its bias is initialised to ones
            gain = self._dense(channels, self.g_sn, bias_initializer="ones")(condition)
            bias = self._dense(channels, self.g_sn)(condition)
        gain = layers.Reshape((1, 1, channels))(gain)
        bias = layers.Reshape((1, 1, channels))(bias)
        return layers.Add()([layers.Multiply()([x, gain]), bias])

    def _up_block(self, x, channels, condition, num_classes, upsample):
        # No biases: every one would be cancelled by the BatchNorm that follows (the next
        # block's, or the last one's), and Adam would still move them on rounding noise.
        h = layers.ReLU()(self._norm(x, condition, num_classes))
        if upsample:
            h = layers.UpSampling2D(2)(h)
        h = self._conv(channels, 3, self.g_sn, use_bias=False)(h)
        h = layers.ReLU()(self._norm(h, condition, num_classes))
        h = self._conv(channels, 3, self.g_sn, use_bias=False)(h)
        shortcut = layers.UpSampling2D(2)(x) if upsample else x
        if upsample or x.shape[-1] != channels:
            shortcut = self._conv(channels, 1, self.g_sn, use_bias=False)(shortcut)
        return layers.Add()([h, shortcut])

    def _conditions(self, z, label, num_classes, stages: int):
        """What G starts from and each stage's BatchNorm condition (see ``_norm``)."""
        if label is not None and self.hierarchical and not self.shared:
            raise ganflow.UsageError(
                "--arch resnet:hierarchical=true with --conditional needs a shared class "
                "embedding: add shared=N (BigGAN's is 128)")
        embedded = None
        if label is not None and self.shared:
            embedded = layers.Embedding(num_classes, self.shared,
                                        embeddings_initializer=self.init)(label)
        if not self.hierarchical:
            return z, [embedded if embedded is not None else label] * stages
        latent = z.shape[-1]
        if latent < stages + 1:
            raise ganflow.UsageError(
                f"--arch resnet:hierarchical=true splits z into {stages + 1} chunks, and "
                f"--latent-dim is {latent}: raise it to at least {stages + 1}")
        bounds = [round(i * latent / (stages + 1)) for i in range(stages + 2)]
        chunks = [z[:, a:b] for a, b in zip(bounds, bounds[1:])]
        if embedded is None:
            return chunks[0], chunks[1:]
        return chunks[0], [layers.Concatenate()([embedded, c]) for c in chunks[1:]]

    def _down_block(self, x, channels, downsample, first):
        h = x if first else layers.ReLU()(x)
        h = self._conv(channels, 3, self.d_sn)(h)
        h = self._conv(channels, 3, self.d_sn)(layers.ReLU()(h))
        if downsample:
            h = layers.AveragePooling2D(2)(h)
        shortcut = x
        if first:  # pooled, then projected: the optimized block's cheaper order
            shortcut = self._conv(channels, 1, self.d_sn)(
                layers.AveragePooling2D(2)(x) if downsample else x)
        elif downsample or x.shape[-1] != channels:
            shortcut = self._conv(channels, 1, self.d_sn)(x)
            if downsample:
                shortcut = layers.AveragePooling2D(2)(shortcut)
        return layers.Add()([h, shortcut])

    def _attend(self, x, side, sn, done):
        """Self-attention after the first stage whose maps are ``attention`` wide (D keeps
        its last side for several stages): ``done`` says whether it is already there."""
        if self.attention == side and not done:
            return SelfAttention(spectral_norm=sn, kernel_initializer=self.init,
                                 sigma_grad=self.sigma_grad)(x), True
        return x, done

    # -- the networks -----------------------------------------------------------------------

    def build_generator(self, spec, latent_dim, num_classes=None):
        g_channels, _, _ = self._plan(spec)
        z = keras.Input((latent_dim,), name="z")
        label = keras.Input((), dtype="int32", name="label") if num_classes else None
        start, conditions = self._conditions(z, label, num_classes, len(g_channels) - 1)
        side, channels = 4, self.width * g_channels[0]
        x = self._dense(side * side * channels, self.g_sn, use_bias=False)(start)
        x = layers.Reshape((side, side, channels))(x)
        for multiplier, condition in zip(g_channels[1:], conditions):
            side *= 2
            for block in range(self.depth):
                x = self._up_block(x, self.width * multiplier, condition, num_classes,
                                   upsample=block == 0)
            x, _ = self._attend(x, side, self.g_sn, False)
        x = layers.ReLU()(self._norm(x, None))
        x = self._conv(spec.shape[-1], 3, self.g_sn)(x)
        out = layers.Activation("tanh", dtype="float32")(x)
        inputs = z if label is None else [z, label]
        return keras.Model(inputs, out, name="generator")

    def build_discriminator(self, spec, num_classes=None):
        _, d_channels, downsamples = self._plan(spec)
        image = keras.Input(spec.shape, name="x")
        x, side, attended = image, spec.shape[0], False
        for i, (multiplier, downsample) in enumerate(zip(d_channels, downsamples)):
            for block in range(self.depth):
                x = self._down_block(x, self.width * multiplier, downsample and block == 0,
                                     first=i == 0 and block == 0)
            side //= 2 if downsample else 1
            x, attended = self._attend(x, side, self.d_sn, attended)
        phi = GlobalSumPooling2D()(layers.ReLU()(x))
        score = self._dense(1, self.d_sn, dtype="float32")(phi)
        if num_classes is None:
            return keras.Model(image, score, name="discriminator")
        label = keras.Input((), dtype="int32", name="label")
        embedding = layers.Embedding(num_classes, phi.shape[-1], embeddings_initializer=self.init)
        embedded = spectral_norm(embedding, self.d_sn, self.sigma_grad)(label)
        projection = layers.Dot(axes=1)([layers.Activation("linear", dtype="float32")(embedded),
                                         layers.Activation("linear", dtype="float32")(phi)])
        logit = layers.Add(dtype="float32")([score, projection])
        return keras.Model([image, label], logit, name="discriminator")


@ganflow.hookimpl
def ganflow_register_architectures(register):
    register("resnet", ResNet, "residual G and D (SNGAN, BigGAN) for 32, 64 and 128 px: "
             "spectral norm in D, optional self-attention and conditional BN/projection",
             settings=SETTINGS)


# SNGAN as mimicry trains it on CIFAR-10 (Lee & Town 2020): the hinge loss, 5 D updates per
# G update, Adam 2e-4 with beta1 0 and beta2 0.9, spectral norm in D, batch 64, z of 128.
# Narrower than its width 64 for the digits on a CPU: measured (bench/bench_step.py, bf16),
# a step (5 D updates and 1 G update on 64) takes 0.9 CPU-s at width 8 and 2.5 at 16, so
# 100 epochs of 5 steps take about as long as the dcgan recipe's run.
SNGAN_RECIPE = {
    "arch": "resnet:width=8",
    "loss": "hinge",
    "dataset": "digits",
    "epochs": 100,
    "batch_size": 64,
    "d_steps": 5,
    "latent_dim": 128,
    "lr_g": 2e-4,
    "lr_d": 2e-4,
    "optimizer": "adam:beta1=0.0,beta2=0.9",
    "eval_every": 25,
    "precision": "auto",
}


# BigGAN (Brock et al. 2019), conditional, at the digits' scale: spectral norm in G and D,
# orthogonal initialisation and regularization, a shared class embedding and the
# hierarchical latent, G's lr 1e-4 against D's 4e-4 with Adam's beta1 0 and beta2 0.999,
# 2 D updates per G update (BigGAN's 128 px setting; StudioGAN's CIFAR-10 one has 4), an EMA
# of G. The same width and batch as the sngan recipe; 2 D steps make a step cheaper.
BIGGAN_RECIPE = {
    **SNGAN_RECIPE,
    "arch": "resnet:width=8,g_sn=true,init=orthogonal,shared=32,hierarchical=true",
    "conditional": True,
    "d_steps": 2,
    "lr_g": 1e-4,
    "lr_d": 4e-4,
    "optimizer": "adam:beta1=0.0,beta2=0.999",
    "regularizers": ["orthogonal:beta=1e-4"],
    "ema": 0.999,
}


@ganflow.hookimpl
def ganflow_register_recipes(register):
    register("sngan", SNGAN_RECIPE, "SNGAN: a ResNet with spectral norm in D, the hinge loss "
             "and 5 D steps per G step (mimicry's settings), on the digits")
    register("biggan", BIGGAN_RECIPE, "conditional BigGAN: shared embedding, hierarchical z, "
             "spectral norm in G and D, orthogonal regularization, EMA of G; on the digits")
