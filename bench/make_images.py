"""Write a folder of N images to prepare and train on: 64x64 (or --size) shapes (discs, squares,
triangles, rings) on textured backgrounds, in RGB, some as JPEG, some with an alpha channel,
some grayscale, in 4 class subfolders; and a few percent broken as a scraper leaves them
(zero bytes, truncated, not an image at all).

    python bench/make_images.py DEST -n 10000            # 2% broken (the default)
    python bench/make_images.py DEST -n 100000 --broken 0.03 --seed 1
    python bench/make_images.py DEST -n 10000 --size 128    # the same scenes, drawn at 128x128
    python bench/make_images.py DEST --digits     # the 1,797 bundled digits, 8x8 PNGs in 0/..9/

Deterministic for a seed. Written by a pool of processes, one per core.
"""

from __future__ import annotations

import argparse
import os
from multiprocessing import Pool
from pathlib import Path

import numpy as np

SHAPES = ("disc", "square", "triangle", "ring")
SIZE = 64


def draw(index: int, seed: int, size: int = SIZE) -> tuple[str, bytes]:
    """Image ``index``: (its file name under its class folder, its bytes); the same scene at
    every ``size``, its lengths scaled."""
    import io

    from PIL import Image, ImageDraw

    rng = np.random.default_rng([seed, index])
    shape = SHAPES[index % len(SHAPES)]
    background = rng.integers(0, 256, 3)
    scale = size / SIZE
    spread = rng.uniform(5, 40)
    noise = rng.normal(0, spread, (SIZE, SIZE, 1))  # drawn at 64 so the scene stays the same
    if size != SIZE:
        noise = np.random.default_rng([seed, index, 2]).normal(0, spread, (size, size, 1))
    stripes = np.sin(np.arange(size) * rng.uniform(0.1, 0.8) / scale)[None, :, None] * 20
    pixels = np.clip(background + noise + stripes, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    pen = ImageDraw.Draw(image)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    r = int(rng.integers(10, 26))  # in 64ths of the side
    cx, cy = (int(v * scale) for v in rng.integers(r, SIZE - r, 2))
    r = int(r * scale)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "disc":
        pen.ellipse(box, fill=colour)
    elif shape == "square":
        pen.rectangle(box, fill=colour)
    elif shape == "triangle":
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        pen.ellipse(box, outline=colour, width=max(2, r // 4))
    kind = index % 10
    buffer = io.BytesIO()
    if kind < 6:
        image.save(buffer, "PNG")
        suffix = "png"
    elif kind < 8:
        image.save(buffer, "JPEG", quality=90)
        suffix = "jpg"
    elif kind < 9:
        image.convert("L").save(buffer, "PNG")
        suffix = "png"
    else:
        rgba = image.convert("RGBA")
        rgba.putalpha(200)
        rgba.save(buffer, "PNG")
        suffix = "png"
    return f"{shape}/{index:07d}.{suffix}", buffer.getvalue()


def write(job):
    index, seed, broken, dest, size = job
    name, data = draw(index, seed, size)
    rng = np.random.default_rng([seed, index, 1])
    if rng.random() < broken:  # as a scraper leaves some
        damage = int(rng.integers(0, 3))
        data = (b"" if damage == 0 else data[: len(data) // 3] if damage == 1
                else b"<html>404 not found</html>")
    path = Path(dest) / name
    path.write_bytes(data)
    return len(data)


def write_digits(dest: Path) -> None:
    """The digits ganflow bundles, as a folder a user would bring: one PNG each, in a subfolder
    per class."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        (dest / str(label)).mkdir(parents=True, exist_ok=True)
        pixels = np.round(image * (255 / 16)).astype(np.uint8)
        Image.fromarray(pixels, "L").save(dest / str(label) / f"{i:04d}.png")
    print(f"Wrote {len(digits.images):,} digits to {dest}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest")
    parser.add_argument("-n", "--count", type=int, default=10_000)
    parser.add_argument("--broken", type=float, default=0.02, help="share of broken files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=SIZE, help="side in pixels")
    parser.add_argument("--digits", action="store_true",
                        help="write scikit-learn's 1,797 digits instead (as they are: 8x8)")
    args = parser.parse_args()
    if args.digits:
        return write_digits(Path(args.dest))
    for shape in SHAPES:
        (Path(args.dest) / shape).mkdir(parents=True, exist_ok=True)
    jobs = [(i, args.seed, args.broken, args.dest, args.size) for i in range(args.count)]
    with Pool(os.cpu_count()) as pool:
        written = sum(pool.imap_unordered(write, jobs, chunksize=256))
    print(f"Wrote {args.count:,} images ({written / 2**20:.0f} MiB) to {args.dest}")


if __name__ == "__main__":
    main()
