"""Sample grids: a batch of images in [-1, 1] tiled into one PNG; grids over training as an
animated GIF."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

MIN_TILE = 64  # small images are scaled up (nearest neighbour) to at least this many pixels
PAD = 2


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Map [-1, 1] to [0, 255]; values outside are clipped."""
    return np.clip((np.asarray(images) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)


def image_grid(images: np.ndarray, columns: int | None = None) -> Image.Image:
    """Tile (n, h, w, c) images in [-1, 1], c in {1, 3}, into a near-square grid with padding."""
    images = to_uint8(images)
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.zeros((rows * (h + PAD) + PAD, columns * (w + PAD) + PAD, c), dtype=np.uint8)
    for i, image in enumerate(images):
        top, left = PAD + (i // columns) * (h + PAD), PAD + (i % columns) * (w + PAD)
        grid[top : top + h, left : left + w] = image
    picture = Image.fromarray(grid[..., 0] if c == 1 else grid)
    scale = max(1, math.ceil(MIN_TILE / max(h, w)))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    return picture


def save_grid(images: np.ndarray, path: str | Path, columns: int | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, columns).save(path)
    return path


def animate(paths: list[Path], out: str | Path, width: int = 320, frames: int = 60,
            seconds: float = 6.0) -> Path:
    """An animated GIF of sample grids over training (``paths`` in order): at most ``frames``
    of them, evenly spaced with the first and the last kept, scaled to ``width`` pixels, played
    in about ``seconds`` and holding the last one; loops. Grey levels are kept to 16 (colours
    to 64), which GIF compresses five times better than 256, at no visible cost to digits."""
    out = Path(out)
    if len(paths) > frames:
        picks = np.unique(np.linspace(0, len(paths) - 1, frames).round().astype(int))
        paths = [paths[i] for i in picks]
    pictures = []
    for path in paths:
        with Image.open(path) as picture:
            grey = picture.mode in ("L", "1")
            height = max(1, round(picture.height * width / picture.width))
            picture = picture.convert("L" if grey else "RGB").resize((width, height),
                                                                     Image.LANCZOS)
            pictures.append(picture.point(lambda v: min(255, v // 16 * 16 + 8)) if grey
                            else picture.quantize(64))
    each = max(40, round(1000 * seconds / len(pictures)))
    durations = [each] * (len(pictures) - 1) + [2000]
    out.parent.mkdir(parents=True, exist_ok=True)
    pictures[0].save(out, save_all=True, append_images=pictures[1:], duration=durations,
                     loop=0, optimize=True)
    return out
