"""Cross-correlation against a NumPy loop over examples and offsets; FFT against direct.

Everything runs in float64 (`helpers.float64`, NumPy in float64), so that the bounds follow from
float64 rounding (u = 2⁻⁵³ ≈ 1.1e-16) and not from one CPU's float32 kernels. Both bounds are
relative to the largest response of the map (rtol = 0), the scale of the FFT's rounding:

- direct: each response is a sum of n = h·w·C products (48 in the small cases, 2,304 at the
  pytlib sizes); two orders of it differ by at most 2·n·u·Σ|products|, and here Σ|products| ≤ 3
  (small cases) or 11 (pytlib sizes) × max|response|: ≤ 6e-12 of max|response| in the worst
  case, about 1e-15 in practice (the roundings of a long sum largely cancel).
- fft: two forward transforms and one inverse, each with a relative 2-norm error of about
  log₂(H·W)·u, so the error of every response is about 3·log₂(H·W)·u·Σ_c‖x_c‖‖k_c‖, the norms of
  the whole search map and exemplar per channel: relative to the whole map, not to the response
  (which may be near 0). Here Σ_c‖x_c‖‖k_c‖ ≤ 40·max|response|, giving ≈ 1.3e-13·max|response|.

RTOL = 1e-10 of max|response| covers both worst cases with 15× to spare, and is still 10⁸ below
what a real mistake shows (a flipped exemplar, an off-by-one offset or a missing channel changes
responses by O(max|response|)).
"""

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import float64

from jvision.ops import correlation

RTOL = 1e-10  # Of the largest response (see above).


def numpy_correlation(search, exemplar):
    batch, height, width, _ = search.shape
    _, h, w, _ = exemplar.shape
    out = np.zeros((batch, height - h + 1, width - w + 1))
    for b in range(batch):
        for i in range(height - h + 1):
            for j in range(width - w + 1):
                out[b, i, j] = np.sum(search[b, i : i + h, j : j + w] * exemplar[b])
    return out


def assert_close(got, expected):
    """NumPy arrays only: outside `float64()` a JAX operation on float64 arrays runs in float32."""
    assert got.dtype == np.float64, got.dtype
    np.testing.assert_allclose(got, expected, rtol=0, atol=RTOL * float(np.abs(expected).max()))


@pytest.mark.parametrize("method", correlation.METHODS)
def test_each_exemplar_slides_over_its_own_search_map(method):
    rng = np.random.default_rng(0)
    search = rng.normal(size=(3, 9, 11, 4))
    exemplar = rng.normal(size=(3, 4, 3, 4))
    expected = numpy_correlation(search, exemplar)
    with float64():
        out = np.asarray(correlation.correlate(jnp.asarray(search), jnp.asarray(exemplar), method))
    assert out.shape == (3, 6, 9)
    assert_close(out, expected)


@pytest.mark.parametrize("method", correlation.METHODS)
def test_a_bank_slides_over_every_image(method):
    rng = np.random.default_rng(1)
    images = rng.normal(size=(2, 10, 8, 3))
    bank = rng.normal(size=(5, 3, 3, 3))
    with float64():
        out = np.asarray(correlation.correlate_bank(jnp.asarray(images), jnp.asarray(bank), method))
    assert out.shape == (2, 8, 6, 5)
    for k in range(5):
        expected = numpy_correlation(images, np.broadcast_to(bank[k], (2, 3, 3, 3)))
        assert_close(out[..., k], expected)


def test_fft_equals_direct_on_pytlib_sizes():
    rng = np.random.default_rng(2)
    with float64():
        search = jnp.asarray(rng.normal(size=(2, 28, 28, 16)))
        exemplar = jnp.asarray(rng.normal(size=(2, 12, 12, 16)))
        direct = np.asarray(correlation.correlate(search, exemplar, "direct"))
        fft = np.asarray(correlation.correlate(search, exemplar, "fft"))
    assert direct.shape == (2, 17, 17)
    assert_close(fft, direct)
