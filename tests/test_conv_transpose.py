"""The transposed convolution with a hand-written kernel gradient, against lax's autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jvision.ops import conv_transpose as ct

CASES = [  # (batch, size, cin, cout, kernel, stride, padding): the shapes the models use.
    (3, 7, 4, 5, 4, 2, "SAME"),  # PatchVAE's pyramid.
    (2, 1, 6, 3, 7, 1, "VALID"),  # PatchVAE's VAE baseline: a grid-sized kernel.
    (2, 5, 4, 4, 1, 1, "SAME"),  # 1×1 projection.
    (2, 5, 3, 2, 3, 1, ((2, 2), (2, 2))),  # The encoding detector's decoder ...
    (2, 6, 3, 2, 3, 2, ((2, 3), (2, 3))),  # ... with PyTorch's output_padding.
    (2, 4, 3, 2, 3, 2, "SAME"),
]


@pytest.mark.parametrize("batch, size, cin, cout, kernel, stride, padding", CASES)
def test_value_and_both_gradients_equal_lax_autodiff(
    batch, size, cin, cout, kernel, stride, padding
):
    x = jax.random.normal(jax.random.key(0), (batch, size, size, cin))
    w = jax.random.normal(jax.random.key(1), (kernel, kernel, cin, cout))

    def reference(x, w):
        return jax.lax.conv_transpose(
            x, w, (stride, stride), padding, dimension_numbers=ct.DIMENSIONS
        )

    y = ct.conv_transpose(x, w, (stride, stride), padding)
    np.testing.assert_allclose(y, reference(x, w), rtol=1e-6)
    g = jax.random.normal(jax.random.key(2), y.shape)
    ours = jax.vjp(lambda x, w: ct.conv_transpose(x, w, (stride, stride), padding), x, w)[1](g)
    theirs = jax.vjp(reference, x, w)[1](g)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_module_matches_flax_conv_transpose_and_its_parameters():
    flax_layer = nnx.ConvTranspose(4, 3, (4, 4), strides=2, padding="SAME", rngs=nnx.Rngs(0))
    ours = ct.ConvTranspose(4, 3, (4, 4), strides=2, padding="SAME", rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(3), (2, 5, 5, 4))
    np.testing.assert_allclose(ours(x), flax_layer(x), rtol=1e-6)
    assert jax.tree.map(jnp.shape, nnx.state(ours)) == jax.tree.map(
        jnp.shape, nnx.state(flax_layer)
    )
