"""Cross-correlation against a NumPy loop over examples and offsets; FFT against direct."""

import jax.numpy as jnp
import numpy as np
import pytest

from jvision.ops import correlation


def numpy_correlation(search, exemplar):
    batch, height, width, _ = search.shape
    _, h, w, _ = exemplar.shape
    out = np.zeros((batch, height - h + 1, width - w + 1))
    for b in range(batch):
        for i in range(height - h + 1):
            for j in range(width - w + 1):
                out[b, i, j] = np.sum(search[b, i : i + h, j : j + w] * exemplar[b])
    return out


@pytest.mark.parametrize("method", correlation.METHODS)
def test_each_exemplar_slides_over_its_own_search_map(method):
    rng = np.random.default_rng(0)
    search = rng.normal(size=(3, 9, 11, 4)).astype(np.float32)
    exemplar = rng.normal(size=(3, 4, 3, 4)).astype(np.float32)
    expected = numpy_correlation(search, exemplar)
    out = correlation.correlate(jnp.asarray(search), jnp.asarray(exemplar), method)
    assert out.shape == (3, 6, 9)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", correlation.METHODS)
def test_a_bank_slides_over_every_image(method):
    rng = np.random.default_rng(1)
    images = rng.normal(size=(2, 10, 8, 3)).astype(np.float32)
    bank = rng.normal(size=(5, 3, 3, 3)).astype(np.float32)
    out = correlation.correlate_bank(jnp.asarray(images), jnp.asarray(bank), method)
    assert out.shape == (2, 8, 6, 5)
    for k in range(5):
        expected = numpy_correlation(images, np.broadcast_to(bank[k], (2, 3, 3, 3)))
        np.testing.assert_allclose(out[..., k], expected, rtol=1e-4, atol=1e-4)


def test_fft_equals_direct_on_pytlib_sizes():
    rng = np.random.default_rng(2)
    search = jnp.asarray(rng.normal(size=(2, 28, 28, 16)).astype(np.float32))
    exemplar = jnp.asarray(rng.normal(size=(2, 12, 12, 16)).astype(np.float32))
    direct = correlation.correlate(search, exemplar, "direct")
    fft = correlation.correlate(search, exemplar, "fft")
    assert direct.shape == (2, 17, 17)
    np.testing.assert_allclose(fft, direct, rtol=1e-3, atol=1e-3 * float(jnp.abs(direct).max()))
