import numpy as np
import pytest

import ganflow
from ganflow_plugins.dcgan import DCGAN


@pytest.mark.parametrize("side, channels, doublings", [(28, 1, 2), (32, 1, 3), (32, 3, 3),
                                                       (64, 3, 4)])
def test_networks_fit_the_image_size(side, channels, doublings):
    spec = ganflow.DataSpec(shape=(side, side, channels), size=100)
    arch = DCGAN()
    g, d = arch.build_generator(spec, 16), arch.build_discriminator(spec)
    images = g(np.zeros((2, 16), np.float32), training=False).numpy()
    assert images.shape == (2, side, side, channels)
    assert images.min() >= -1.0 and images.max() <= 1.0  # tanh out
    assert tuple(d(images).shape) == (2, 1)
    assert sum("conv2d_transpose" in layer.name for layer in g.layers) == doublings


@pytest.mark.parametrize("shape, message", [
    ((30, 20, 1), "needs square images with an even side of at least 8, got 30x20"),
    ((7, 7, 1), "got 7x7"),
    ((2,), "needs images"),
])
def test_unfit_shapes_are_refused(shape, message):
    with pytest.raises(ganflow.UsageError, match=message):
        DCGAN().build_generator(ganflow.DataSpec(shape=shape, size=10), 8)
