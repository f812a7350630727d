import numpy as np

from jvision.ops import spatial


def test_depth_to_space_matches_explicit_loop():
    rng = np.random.default_rng(0)
    block, channels = 2, 3
    x = rng.normal(size=(2, 4, 5, channels * block * block)).astype(np.float32)
    expected = np.zeros((2, 8, 10, channels), np.float32)
    for h in range(4):
        for w in range(5):
            for i in range(block):
                for j in range(block):
                    for c in range(channels):
                        expected[:, h * block + i, w * block + j, c] = x[
                            :, h, w, (i * block + j) * channels + c
                        ]
    np.testing.assert_array_equal(spatial.depth_to_space(x, block), expected)
