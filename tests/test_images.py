"""Sample pictures: the grid of a batch, the animation of grids over training."""

import numpy as np

from ganflow.images import image_grid


def test_grid_tiles_with_padding_and_scales_small_images():
    images = np.full((5, 8, 8, 1), -1.0, np.float32)
    images[1] = 1.0
    grid = np.asarray(image_grid(images))
    # 3 columns x 2 rows of 8-pixel tiles, 2 px padding, scaled 8x to 64-pixel tiles.
    assert grid.shape == ((2 * 10 + 2) * 8, (3 * 10 + 2) * 8)
    assert grid[(2 + 4) * 8, (12 + 4) * 8] == 255 and grid[(2 + 4) * 8, (2 + 4) * 8] == 0


def test_grids_over_training_become_one_looping_gif(workdir):
    from PIL import Image

    from ganflow.images import animate

    paths = []
    for i in range(101):  # 101 grids, as a 100-epoch run draws: a white bar i pixels wide
        picture = np.zeros((100, 120), np.uint8)
        picture[:, :i] = 255
        Image.fromarray(picture).save(path := workdir / f"epoch_{i:04d}.png")
        paths.append(path)
    gif = Image.open(animate(paths, workdir / "samples.gif", width=60, frames=20))
    assert (gif.n_frames, gif.size, gif.info["loop"]) == (20, (60, 50), 0)
    widths = []
    for frame in range(gif.n_frames):
        gif.seek(frame)
        widths.append(int((np.asarray(gif.convert("L"))[25] > 128).sum()))
    assert widths[0] == 0 and widths[-1] == 50  # the first grid and the last are kept
    assert widths == sorted(widths)  # in order
