"""How a run shows its generator each epoch: a picture, and exact metrics on toy data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ganflow import noise
from ganflow.images import save_grid

TOY_EVAL_SAMPLES = 10_000


class SampleView:
    """How a run shows its generator: a PNG per epoch and, for toy data, exact metrics.

    Images become a grid of ``samples`` fixed noise vectors; a conditional generator's
    (``num_classes``) has one row per class (one sample a class, for many classes:
    ``noise.class_rows``). Points become a scatter (2-D) or density (1-D)
    plot against real data; when the data's density is known, ``TOY_EVAL_SAMPLES`` samples
    from the fixed evaluation noise are scored with ``ganflow.toy.toy_metrics`` as ``toy/...``,
    and the first ``toy.PACGAN_SAMPLES`` of them with ``toy.pacgan_metrics`` (PacGAN's
    definitions) as ``toy/pacgan_...``.
    """

    def __init__(self, source, latent_dim: int, samples: int, seed: int,
                 num_classes: int | None = None):
        self.source = source
        self.labels = None if not num_classes else noise.class_rows(samples, num_classes)
        self.columns = None if not num_classes else noise.grid_columns(self.labels)
        count = samples if self.labels is None else len(self.labels)
        grid_noise = noise.latent(count, latent_dim, seed, "grid")
        self.noise = grid_noise
        self.density = getattr(source, "density", None)
        self.is_image = source.spec.is_image
        self.eval_noise = None
        self.real = None
        if not self.is_image:
            count = TOY_EVAL_SAMPLES if self.density is not None else len(grid_noise)
            self.eval_noise = noise.latent(count, grid_noise.shape[1], seed, "eval")
            if self.density is None:
                self.real = np.stack([x for x in source.examples().take(len(grid_noise)).as_numpy_iterator()])

    def __call__(self, generator, path: Path, title: str) -> tuple[Path, dict[str, float]]:
        from ganflow.evaluation import generate

        if self.is_image:
            images = generate(generator, self.noise, self.labels)
            return save_grid(images, path, self.columns), {}
        from ganflow import toy

        points = generate(generator, self.eval_noise)
        metrics = {}
        if self.density is not None:
            metrics = toy.toy_metrics(points, self.density)
            metrics.update(toy.pacgan_metrics(points, self.density))
            title = f"{title}: {toy.format_metrics(metrics)}"
        shown = points[: len(self.noise)]
        path = toy.plot_points(shown, path, title, real=self.real, density=self.density)
        return path, {f"toy/{k}": float(v) for k, v in metrics.items()}
