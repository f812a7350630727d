"""The transposed convolution with a hand-written kernel gradient, against lax's autodiff.

Both sides compute in float64 (`helpers.float64`), so that the bound follows from float64
rounding and not from one CPU's float32 kernels. A value or gradient entry is a sum of at most
n = 147 products (the kernel gradient of the first case sums B·H·W = 3·7·7, the input gradient of
the second k·k·Cout = 7·7·3). Two orders of the same sum differ by at most 2·n·u·Σ|products|,
u = 2⁻⁵³ ≈ 1.1e-16, and for the models' standard-normal cases Σ|products| ≤ 4.4× the largest
entry of the result: ≤ 1.5e-13 of max|result| in the worst case, ~1e-16 in practice. RTOL = 1e-12
of max|result| holds while Σ|products| stays under 30× the largest entry; a wrong tap, a
transposed or flipped kernel or a missing stride changes entries by O(max|result|).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import float64, model_to_float64

from jvision.ops import conv_transpose as ct

RTOL = 1e-12  # Of the reference's largest magnitude (see above).

CASES = [  # (batch, size, cin, cout, kernel, stride, padding): the shapes the models use.
    (3, 7, 4, 5, 4, 2, "SAME"),  # PatchVAE's pyramid.
    (2, 1, 6, 3, 7, 1, "VALID"),  # PatchVAE's VAE baseline: a grid-sized kernel.
    (2, 5, 4, 4, 1, 1, "SAME"),  # 1×1 projection.
    (2, 5, 3, 2, 3, 1, ((2, 2), (2, 2))),  # The encoding detector's decoder ...
    (2, 6, 3, 2, 3, 2, ((2, 3), (2, 3))),  # ... with PyTorch's output_padding.
    (2, 4, 3, 2, 3, 2, "SAME"),
    (2, 5, 3, 2, 3, 3, "VALID"),  # Beyond the models: a stride above the kernel's reach, ...
    (2, 4, 2, 3, 5, 2, ((0, 0), (0, 0))),  # ... no padding (every tap cropped), ...
    (2, 3, 2, 2, 2, 3, "SAME"),  # ... a kernel smaller than the stride.
]


def assert_close(got, expected):
    assert got.dtype == expected.dtype == jnp.float64, (got.dtype, expected.dtype)
    got, expected = np.asarray(got), np.asarray(expected)
    np.testing.assert_allclose(got, expected, rtol=0, atol=RTOL * np.abs(expected).max())


@pytest.mark.parametrize("batch, size, cin, cout, kernel, stride, padding", CASES)
def test_value_and_both_gradients_equal_lax_autodiff(
    batch, size, cin, cout, kernel, stride, padding
):
    with float64():
        x = jax.random.normal(jax.random.key(0), (batch, size, size, cin), jnp.float64)
        w = jax.random.normal(jax.random.key(1), (kernel, kernel, cin, cout), jnp.float64)

        def reference(x, w):
            return jax.lax.conv_transpose(
                x, w, (stride, stride), padding, dimension_numbers=ct.DIMENSIONS
            )

        def ours(x, w):
            return ct.conv_transpose(x, w, (stride, stride), padding)

        def pulled_back(f, g):  # Both gradients, of x and of w.
            return jax.jit(lambda x, w, g: jax.vjp(f, x, w)[1](g))(x, w, g)

        y = jax.jit(ours)(x, w)
        assert_close(y, jax.jit(reference)(x, w))
        g = jax.random.normal(jax.random.key(2), y.shape, jnp.float64)
        for a, b in zip(pulled_back(ours, g), pulled_back(reference, g), strict=True):
            assert_close(a, b)


def test_module_matches_flax_conv_transpose_and_its_parameters():
    flax_layer = nnx.ConvTranspose(4, 3, (4, 4), strides=2, padding="SAME", rngs=nnx.Rngs(0))
    ours = ct.ConvTranspose(4, 3, (4, 4), strides=2, padding="SAME", rngs=nnx.Rngs(0))
    assert jax.tree.map(jnp.shape, nnx.state(ours)) == jax.tree.map(
        jnp.shape, nnx.state(flax_layer)
    )
    with float64():
        model_to_float64(flax_layer)
        model_to_float64(ours)
        x = jax.random.normal(jax.random.key(3), (2, 5, 5, 4), jnp.float64)
        assert_close(ours(x), flax_layer(x))
