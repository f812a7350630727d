"""DRAW's attention against an independent NumPy transcription of the paper's equations 19-29."""

import numpy as np
import pytest

from jvision.ops import attention


def numpy_filterbank(g, delta, sigma2, n, size):
    """F[i, a] = exp(-(a - μ_i)² / 2σ²) / Z with μ_i = g + (i - N/2 - 0.5)·δ, i, a 1-based."""
    f = np.zeros((n, size))
    for i in range(1, n + 1):
        mu = g + (i - n / 2 - 0.5) * delta
        for a in range(1, size + 1):
            f[i - 1, a - 1] = np.exp(-((a - mu) ** 2) / (2 * sigma2))
        f[i - 1] /= max(f[i - 1].sum(), 1e-8)
    return f


def numpy_window(raw, height, width, n):
    gx_t, gy_t, log_s2, log_d, log_g = raw
    gx = (width + 1) / 2 * (gx_t + 1)
    gy = (height + 1) / 2 * (gy_t + 1)
    delta = (max(height, width) - 1) / (n - 1) * np.exp(log_d)
    return gx, gy, delta, np.exp(log_s2), np.exp(log_g)


@pytest.mark.parametrize("n, height, width", [(2, 28, 28), (5, 28, 28), (3, 20, 33), (12, 9, 16)])
def test_read_and_write_match_numpy(n, height, width):
    rng = np.random.default_rng(n)
    batch = 3
    raw = rng.normal(size=(batch, 5)) * 0.7
    images = rng.random((batch, height, width, 2))
    patch = rng.normal(size=(batch, n, n, 2))

    window = attention.window_from_raw(raw.astype(np.float32), height, width, n)
    f_y, f_x = attention.filterbanks(window, n, height, width)
    glimpse = attention.read_glimpse(images.astype(np.float32), f_y, f_x, window.intensity)
    written = attention.write_patch(patch.astype(np.float32), f_y, f_x, window.intensity)

    for b in range(batch):
        gx, gy, delta, sigma2, gamma = numpy_window(raw[b], height, width, n)
        fy = numpy_filterbank(gy, delta, sigma2, n, height)
        fx = numpy_filterbank(gx, delta, sigma2, n, width)
        np.testing.assert_allclose(f_y[b], fy, atol=1e-5)
        np.testing.assert_allclose(f_x[b], fx, atol=1e-5)
        for c in range(2):
            np.testing.assert_allclose(
                glimpse[b, :, :, c], gamma * fy @ images[b, :, :, c] @ fx.T, rtol=1e-4, atol=1e-5
            )
            np.testing.assert_allclose(
                written[b, :, :, c], fy.T @ patch[b, :, :, c] @ fx / gamma, rtol=1e-4, atol=1e-5
            )


def test_zero_raw_parameters_centre_the_grid():
    window = attention.window_from_raw(np.zeros((1, 5), np.float32), 28, 28, 5)
    np.testing.assert_allclose(window.center_x, 14.5)  # The centre of pixels 1..28.
    np.testing.assert_allclose(window.stride, 27 / 4)  # The grid spans the image.
    f_y, f_x = attention.filterbanks(window, 5, 28, 28)
    np.testing.assert_allclose(f_x[0], f_x[0, ::-1, ::-1], atol=1e-6)  # Symmetric about g.
    np.testing.assert_allclose(f_x.sum(-1), 1.0, rtol=1e-6)


def test_window_box_spans_n_strides_around_the_centre():
    window = attention.Window(*(np.array([v], np.float32) for v in (10.0, 5.0, 2.0, 1.0, 1.0)))
    np.testing.assert_allclose(attention.window_box(window, 4)[0], [0.0, 5.0, 8.0, 13.0])
