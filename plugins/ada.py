"""Adaptive discriminator augmentation (ADA; Karras et al. 2020, "Training Generative
Adversarial Networks with Limited Data"): the ``ada`` augmentation.

Every input of D while training, real and fake, in both updates, goes through one pipeline in
which each operation is applied per example with probability ``p`` times its multiplier (all
1 here, as in the paper's ``bgc``): pixel blitting (x-flip, 90-degree rotations, integer
translation), general geometric transformations (isotropic scaling, arbitrary rotation,
anisotropic scaling, fractional translation) and colour transformations (brightness,
contrast, luma flip, hue rotation, saturation); cutout is off unless asked for. The geometric
operations are composed into one matrix per example and applied by one bilinear resampling
with mirrored borders; the colour operations into one 4x4 matrix. Everything is differentiable
in the images (a resampling made of gathers, whose gradient is exact), so G learns through the
augmentation of its fakes, and R1's double backprop goes through it too.

``p`` adapts (``target`` set, the default): after every discriminator update the signs of D's
logits of its (augmented) real examples are summed over the global batch; every ``interval``
updates, with r_t their mean since the last adjustment, p moves by
sign(r_t - target) x images / (kimg x 1000), so that p can go from 0 to 1 in ``kimg``
thousand images, and never below 0. ``ada:p=0.3`` fixes p instead. p and r_t are the
pipeline's state: checkpointed, restored with the run and the same on every replica; they are
logged as ``ada/p`` and ``ada/r_t``.

Differences from NVlabs' stylegan2-ada (``training/augment.py``): the resampling is bilinear on
the image itself, without the 2x-upsampled wavelet filtering that keeps aliasing out of the
fractional transformations (the blitting operations are exact either way), and the
image-space filter bank and additive noise (``bgcfn``) are not built.
"""

from __future__ import annotations

import math

import keras
from keras import ops

import ganflow

# The operations of each pipeline: the names stylegan2-ada's --augpipe takes.
PIPES = {
    "blit": ("xflip", "rotate90", "xint"),
    "geom": ("scale", "rotate", "aniso", "xfrac"),
    "color": ("brightness", "contrast", "lumaflip", "hue", "saturation"),
    "bg": ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac"),
    "bgc": ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac", "brightness",
            "contrast", "lumaflip", "hue", "saturation"),
}

SETTINGS = {
    "p": ganflow.Setting(None, "a fixed augmentation probability, without adaptation (default: "
                         "adapt p towards target)", type=float, minimum=0.0),
    "target": ganflow.Setting(0.6, "the overfitting signal r_t = E[sign(D(x))] to hold",
                              minimum=0.0, maximum=1.0),
    "kimg": ganflow.Setting(500.0, "thousands of real images for p to go from 0 to 1",
                            minimum=0.001),
    "interval": ganflow.Setting(4, "discriminator updates between adjustments of p", minimum=1),
    "pipe": ganflow.Setting("bgc", "the operations: " + ", ".join(PIPES) + ", or single ones "
                            "joined by + (xflip+rotate90)"),
    "cutout": ganflow.Setting(0.0, "probability multiplier of cutout (0: off)", minimum=0.0),
    "xint_max": ganflow.Setting(0.125, "largest integer translation, as a share of the side",
                                minimum=0.0, maximum=1.0),
    "scale_std": ganflow.Setting(0.2, "log2 standard deviation of isotropic scaling",
                                 minimum=0.0),
    "rotate_max": ganflow.Setting(1.0, "range of arbitrary rotation (1: the full circle)",
                                  minimum=0.0),
    "aniso_std": ganflow.Setting(0.2, "log2 standard deviation of anisotropic scaling",
                                 minimum=0.0),
    "xfrac_std": ganflow.Setting(0.125, "standard deviation of fractional translation, as a "
                                 "share of the side", minimum=0.0),
    "brightness_std": ganflow.Setting(0.2, "standard deviation of brightness", minimum=0.0),
    "contrast_std": ganflow.Setting(0.5, "log2 standard deviation of contrast", minimum=0.0),
    "hue_max": ganflow.Setting(1.0, "range of hue rotation (1: the full circle)", minimum=0.0),
    "saturation_std": ganflow.Setting(1.0, "log2 standard deviation of saturation",
                                      minimum=0.0),
    "cutout_size": ganflow.Setting(0.5, "the cutout square's side, as a share of the image's",
                                   minimum=0.0, maximum=1.0),
}


class ADA:
    """The pipeline, its probability ``p`` and what adapts it (see the module docstring)."""

    def __init__(self, p=None, target=0.6, kimg=500.0, interval=4, pipe="bgc", cutout=0.0,
                 **strengths):
        self.adaptive = p is None
        self.target, self.kimg, self.interval = target, kimg, interval
        chosen = PIPES.get(pipe) or tuple(pipe.split("+"))
        unknown = sorted(set(chosen) - set(PIPES["bgc"]))
        if unknown:
            raise ganflow.UsageError(f"--augment ada: pipe {pipe!r}: no operation "
                                     f"{', '.join(unknown)}; the pipes are {', '.join(PIPES)}, "
                                     f"the operations {', '.join(PIPES['bgc'])}")
        self.ops = set(chosen) | ({"cutout"} if cutout else set())
        self.cutout = cutout
        self.strengths = {key: setting.default for key, setting in SETTINGS.items()
                          if key.endswith(("_max", "_std", "_size"))}
        self.strengths.update(strengths)
        # The state (ganflow's plugin state: checkpointed, restored, the same on every
        # replica): p, the last r_t, and what the current interval has summed so far.
        first = "only_first_replica"  # each replica computes the same value from global sums
        self.state = {
            "p": keras.Variable(0.0 if p is None else p, trainable=False, name="ada_p",
                                aggregation=first),
            "r_t": keras.Variable(0.0, trainable=False, name="ada_r_t", aggregation=first),
            "signs": keras.Variable(0.0, trainable=False, name="ada_signs", aggregation=first),
            "images": keras.Variable(0.0, trainable=False, name="ada_images",
                                     aggregation=first),
            "updates": keras.Variable(0, dtype="int32", trainable=False, name="ada_updates",
                                      aggregation=first),
        }

    # What ganflow calls.
    def __call__(self, images, seed_generator):
        dtype = images.dtype
        x = ops.cast(images, "float32")
        p = ops.cast(self.state["p"], "float32")
        x = self._geometric(x, p, seed_generator)
        x = self._color(x, p, seed_generator)
        if "cutout" in self.ops:
            x = self._cutout(x, p * self.cutout, seed_generator)
        return ops.cast(x, dtype)

    def observe(self, step):
        """After each discriminator update: the signs of D's logits of its real examples,
        summed over the global batch; every ``interval`` updates, p adjusted."""
        if not self.adaptive:
            return
        logits = ops.cast(step.real_logits, "float32")
        signs = ganflow.replica_sum(ops.sum(ops.sign(logits)))
        images = ganflow.replica_sum(ops.cast(ops.shape(logits)[0], "float32"))
        state = self.state
        total_signs = state["signs"] + signs
        total_images = state["images"] + images
        updates = state["updates"] + 1
        due = updates >= self.interval
        r_t = total_signs / ops.maximum(total_images, 1.0)
        adjust = ops.sign(r_t - self.target) * total_images / (self.kimg * 1000.0)
        state["p"].assign(ops.where(due, ops.maximum(state["p"] + adjust, 0.0), state["p"]))
        state["r_t"].assign(ops.where(due, r_t, state["r_t"]))
        state["signs"].assign(ops.where(due, 0.0, total_signs))
        state["images"].assign(ops.where(due, 0.0, total_images))
        state["updates"].assign(ops.where(due, 0, updates))

    def metrics(self, step):
        return {"ada/p": ops.convert_to_tensor(self.state["p"]),
                "ada/r_t": ops.convert_to_tensor(self.state["r_t"])}

    # The pipeline.
    def _chosen(self, shape, p, seed_generator):
        """Per example (and broadcast over ``shape[1:]``): whether an operation applies."""
        return keras.random.uniform(shape, seed=seed_generator) < p

    def _geometric(self, x, p, seed):
        batch, height, width = ops.shape(x)[0], x.shape[1], x.shape[2]
        s = self.strengths
        eye = ops.broadcast_to(ops.eye(3), (batch, 3, 3))
        g = eye  # G_inv, from output pixel to input pixel, in centred coordinates

        def uniform(shape=None):
            return keras.random.uniform(shape or (batch,), seed=seed)

        def normal(shape=None):
            return keras.random.normal(shape or (batch,), seed=seed)

        if "xflip" in self.ops:
            i = ops.where(self._chosen((batch,), p, seed), ops.floor(uniform() * 2), 0.0)
            g = g @ _scale(1 - 2 * i, ops.ones_like(i))
        if "rotate90" in self.ops:
            i = ops.where(self._chosen((batch,), p, seed), ops.floor(uniform() * 4), 0.0)
            g = g @ _rotate(-math.pi / 2 * i)
        if "xint" in self.ops:
            t = (uniform((batch, 2)) * 2 - 1) * s["xint_max"]
            t = ops.where(self._chosen((batch, 1), p, seed), t, 0.0)
            g = g @ _translate(-ops.round(t[:, 0] * width), -ops.round(t[:, 1] * height))
        if "scale" in self.ops:
            k = ops.where(self._chosen((batch,), p, seed), 2.0 ** (normal() * s["scale_std"]),
                          1.0)
            g = g @ _scale(1 / k, 1 / k)
        p_rot = 1 - ops.sqrt(ops.clip(1 - p, 0.0, 1.0))  # P(pre or post) = p
        if "rotate" in self.ops:
            theta = (uniform() * 2 - 1) * math.pi * s["rotate_max"]
            theta = ops.where(self._chosen((batch,), p_rot, seed), theta, 0.0)
            g = g @ _rotate(-theta)  # before the anisotropic scaling
        if "aniso" in self.ops:
            k = ops.where(self._chosen((batch,), p, seed), 2.0 ** (normal() * s["aniso_std"]),
                          1.0)
            g = g @ _scale(1 / k, k)
        if "rotate" in self.ops:
            theta = (uniform() * 2 - 1) * math.pi * s["rotate_max"]
            theta = ops.where(self._chosen((batch,), p_rot, seed), theta, 0.0)
            g = g @ _rotate(-theta)  # after it
        if "xfrac" in self.ops:
            t = normal((batch, 2)) * s["xfrac_std"]
            t = ops.where(self._chosen((batch, 1), p, seed), t, 0.0)
            g = g @ _translate(-t[:, 0] * width, -t[:, 1] * height)
        if g is eye:
            return x
        return resample(x, g)

    def _color(self, x, p, seed):
        batch, channels = ops.shape(x)[0], x.shape[-1]
        s = self.strengths
        c = ops.broadcast_to(ops.eye(4), (batch, 4, 4))
        start = c
        v = ops.convert_to_tensor([1.0, 1.0, 1.0, 0.0]) / math.sqrt(3)  # the luma axis
        vv = ops.outer(v, v)

        def chosen():
            return self._chosen((batch, 1, 1), p, seed)

        if "brightness" in self.ops:
            b = ops.where(chosen(), keras.random.normal((batch, 1, 1), seed=seed)
                          * s["brightness_std"], 0.0)
            c = _translate3(b) @ c
        if "contrast" in self.ops:
            k = ops.where(chosen(), 2.0 ** (keras.random.normal((batch, 1, 1), seed=seed)
                                            * s["contrast_std"]), 1.0)
            c = (ops.eye(4) * ops.concatenate([k, k, k, ops.ones_like(k)], axis=-1)) @ c
        if "lumaflip" in self.ops:
            i = ops.where(chosen(), ops.floor(keras.random.uniform((batch, 1, 1), seed=seed)
                                              * 2), 0.0)
            c = (ops.eye(4) - 2 * vv * i) @ c  # a Householder reflection
        if "hue" in self.ops and channels > 1:
            theta = (keras.random.uniform((batch,), seed=seed) * 2 - 1) * math.pi * s["hue_max"]
            theta = ops.where(chosen()[:, 0, 0], theta, 0.0)
            c = _rotate_about(v, theta) @ c
        if "saturation" in self.ops and channels > 1:
            k = ops.where(chosen(), 2.0 ** (keras.random.normal((batch, 1, 1), seed=seed)
                                            * s["saturation_std"]), 1.0)
            c = (vv + (ops.eye(4) - vv) * k) @ c
        if c is start:
            return x
        if channels == 3:
            return ops.einsum("bij,bhwj->bhwi", c[:, :3, :3], x) + c[:, None, None, :3, 3]
        if channels == 1:  # as stylegan2-ada: the mean of the three rows
            row = ops.mean(c[:, :3, :], axis=1)  # (batch, 4)
            return x * ops.sum(row[:, :3], axis=-1)[:, None, None, None] + row[:, None, None, 3:]
        raise ganflow.UsageError(f"augmentation ada needs images of 1 or 3 channels, got "
                                 f"{channels}")

    def _cutout(self, x, p, seed):
        batch, height, width = ops.shape(x)[0], x.shape[1], x.shape[2]
        size = ops.where(self._chosen((batch, 1), p, seed), self.strengths["cutout_size"], 0.0)
        centre = keras.random.uniform((batch, 2), seed=seed)
        cols = (ops.arange(width, dtype="float32")[None, :] + 0.5) / width
        rows = (ops.arange(height, dtype="float32")[None, :] + 0.5) / height
        outside_x = ops.abs(cols - centre[:, :1]) >= size / 2  # (batch, width)
        outside_y = ops.abs(rows - centre[:, 1:]) >= size / 2  # (batch, height)
        keep = ops.logical_or(outside_y[:, :, None], outside_x[:, None, :])
        return x * ops.cast(keep, x.dtype)[..., None]


def _matrix(rows):
    """(batch, n, n) from rows of per-example values (tensors of (batch,)) or numbers."""
    batch = next(e for row in rows for e in row if not isinstance(e, (int, float)))
    return ops.stack([ops.stack([e if not isinstance(e, (int, float))
                                 else ops.full_like(batch, float(e)) for e in row], axis=-1)
                      for row in rows], axis=-2)


def _translate(tx, ty):
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]])


def _scale(sx, sy):
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]])


def _rotate(theta):
    """The rotation of output coordinates back to input ones (stylegan2-ada's rotate2d_inv)."""
    c, s = ops.cos(theta), ops.sin(theta)
    return _matrix([[c, s, 0], [-s, c, 0], [0, 0, 1]])


def _translate3(b):
    b = b[:, 0, 0]
    return _matrix([[1, 0, 0, b], [0, 1, 0, b], [0, 0, 1, b], [0, 0, 0, 1]])


def _rotate_about(v, theta):
    """A 4x4 rotation by ``theta`` (batch,) about the axis ``v`` (4,): the colour hue."""
    vx, vy, vz = float(v[0]), float(v[1]), float(v[2])
    s, c = ops.sin(theta), ops.cos(theta)
    cc = 1 - c
    return _matrix([[vx * vx * cc + c, vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
                    [vy * vx * cc + vz * s, vy * vy * cc + c, vy * vz * cc - vx * s, 0],
                    [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c, 0],
                    [0, 0, 0, 1]])


def resample(images, g_inv):
    """``images`` (batch, h, w, c) resampled by the per-example transforms ``g_inv`` (batch, 3,
    3), which map an output pixel's centred coordinates to the input's: bilinear, borders
    mirrored (d c b | a b c d | c b a), made of gathers so its gradient in the images is exact
    (and differentiable again, for R1)."""
    batch, height, width, channels = ops.shape(images)[0], images.shape[1], images.shape[2], \
        images.shape[3]
    cx, cy = (width - 1) / 2, (height - 1) / 2
    ys, xs = ops.meshgrid(ops.arange(height, dtype="float32"),
                          ops.arange(width, dtype="float32"), indexing="ij")
    points = ops.stack([ops.reshape(xs - cx, (-1,)), ops.reshape(ys - cy, (-1,)),
                        ops.ones((height * width,))])  # (3, h*w)
    source = ops.einsum("bij,jn->bin", g_inv, points)  # (batch, 3, h*w)
    x, y = source[:, 0] + cx, source[:, 1] + cy
    x0, y0 = ops.floor(x), ops.floor(y)
    wx, wy = x - x0, y - y0
    flat = ops.reshape(images, (-1, channels))
    base = ops.arange(batch, dtype="int32")[:, None] * (height * width)

    def pixel(xi, yi):
        xi = _mirror(ops.cast(xi, "int32"), width)
        yi = _mirror(ops.cast(yi, "int32"), height)
        return ops.take(flat, ops.reshape(base + yi * width + xi, (-1,)), axis=0)

    def weight(w):
        return ops.reshape(w, (-1, 1))

    out = (pixel(x0, y0) * weight((1 - wx) * (1 - wy)) + pixel(x0 + 1, y0) * weight(wx * (1 - wy))
           + pixel(x0, y0 + 1) * weight((1 - wx) * wy) + pixel(x0 + 1, y0 + 1) * weight(wx * wy))
    return ops.reshape(out, (batch, height, width, channels))


def _mirror(i, n):
    """Index ``i`` mirrored into 0..n-1 about the edge pixels (period 2n - 2)."""
    if n == 1:
        return ops.zeros_like(i)
    period = 2 * n - 2
    i = ops.mod(i, period)
    return ops.where(i >= n, period - i, i)


@ganflow.hookimpl
def ganflow_register_augmentations(register):
    register("ada", ADA, "adaptive discriminator augmentation (Karras et al. 2020): the bgc "
             "pipeline at a probability p adapted from D's overfitting", settings=SETTINGS)
