"""DRAW's attention against an independent NumPy transcription of the paper's equations 19-29.

Both sides compute in float64 (`helpers.float64`; u = 2⁻⁵³ ≈ 1.1e-16), so that the bounds follow
from float64 rounding and not from one CPU's float32 kernels:

- A filter entry F = exp(-E) / Σ exp(-E'), E = (a - μ)² / 2σ², is ≤ 1. Its exponent is computed
  with an absolute error of a few u·E, which exp turns into a relative one; the row sum adds at
  most size·u ≤ 33u. Where E is large F is tiny (here E·F ≤ 18 for every entry, including rows
  far off the image whose sum is floored at 1e-8), so |ΔF| ≤ (3·18 + 33)·u ≈ 1e-14:
  F_ATOL = 1e-12.
- A glimpse entry sums H·W ≤ 924 products of non-negative terms, a written pixel N² ≤ 144 of
  signed ones (their Σ|terms| ≤ 5·max|written| here); two orders differ by at most
  2·n·u·Σ|terms| ≤ 2e-13·max, plus F's error above: MAP_RTOL = 1e-11 of the largest entry of each
  map (rtol = 0: a written pixel may be ~0 by cancellation).

Both are ≥ 10⁹ below what a real mistake shows (a swapped axis, γ multiplied instead of divided,
a 0- instead of 1-based grid move entries by O(1) of the map's largest).
"""

import jax
import numpy as np
import pytest
from helpers import float64

from jvision.ops import attention

F_ATOL = 1e-12
MAP_RTOL = 1e-11  # Of the map's largest entry.


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

    def read_and_write(raw, images, patch):
        window = attention.window_from_raw(raw, height, width, n)
        f_y, f_x = attention.filterbanks(window, n, height, width)
        glimpse = attention.read_glimpse(images, f_y, f_x, window.intensity)
        return f_y, f_x, glimpse, attention.write_patch(patch, f_y, f_x, window.intensity)

    with float64():
        f_y, f_x, glimpse, written = jax.jit(read_and_write)(raw, images, patch)
        # As NumPy: outside `float64()` a JAX operation on float64 arrays runs in float32.
        f_y, f_x, glimpse, written = map(np.asarray, (f_y, f_x, glimpse, written))
    assert glimpse.dtype == written.dtype == np.float64

    def assert_map_close(got, expected):
        atol = MAP_RTOL * np.abs(expected).max()
        np.testing.assert_allclose(got, expected, rtol=0, atol=atol)

    for b in range(batch):
        gx, gy, delta, sigma2, gamma = numpy_window(raw[b], height, width, n)
        fy = numpy_filterbank(gy, delta, sigma2, n, height)
        fx = numpy_filterbank(gx, delta, sigma2, n, width)
        np.testing.assert_allclose(f_y[b], fy, rtol=0, atol=F_ATOL)
        np.testing.assert_allclose(f_x[b], fx, rtol=0, atol=F_ATOL)
        for c in range(2):
            assert_map_close(glimpse[b, :, :, c], gamma * fy @ images[b, :, :, c] @ fx.T)
            assert_map_close(written[b, :, :, c], fy.T @ patch[b, :, :, c] @ fx / gamma)


def test_zero_raw_parameters_centre_the_grid():
    with float64():
        window = attention.window_from_raw(np.zeros((1, 5)), 28, 28, 5)
        f_y, f_x = attention.filterbanks(window, 5, 28, 28)
        center, stride, f_x = (np.asarray(v) for v in (window.center_x, window.stride, f_x))
    np.testing.assert_array_equal(center, 14.5)  # The centre of pixels 1..28 (exact).
    np.testing.assert_array_equal(stride, 27 / 4)  # The grid spans the image (exact).
    # Mirrored filters see the same exponents exactly (a - μ is exact here); only their row sums'
    # order differs: ≤ 2·28·u relative ≈ 6e-15. A row sums to 1 within (28 + 28 + 2)·u ≈ 7e-15.
    np.testing.assert_allclose(f_x[0], f_x[0, ::-1, ::-1], rtol=0, atol=1e-13)  # Symmetric.
    np.testing.assert_allclose(f_x.sum(-1), 1.0, rtol=1e-13)


def test_window_box_spans_n_strides_around_the_centre():
    window = attention.Window(*(np.array([v], np.float32) for v in (10.0, 5.0, 2.0, 1.0, 1.0)))
    np.testing.assert_allclose(attention.window_box(window, 4)[0], [0.0, 5.0, 8.0, 13.0])
