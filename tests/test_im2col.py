"""benchmarks/im2col.py: the convolution as one matmul over patches equals
`lax.conv_general_dilated`, values and both gradients, compared in float64 (two summation orders
of the same products: agreement to float64 rounding, whatever the CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import benchmark, float64

im2col = benchmark("im2col")

CASES = {  # (batch, height, width, cin, cout, kernel, stride, padding)
    "3x3 same": (2, 7, 6, 3, 4, 3, 1, "SAME"),
    "3x3 stride 2, odd size": (2, 7, 7, 2, 3, 3, 2, "SAME"),
    "3x3 stride 2, even size": (1, 8, 6, 2, 3, 3, 2, "SAME"),
    "7x7 stride 2 stem": (2, 11, 11, 1, 5, 7, 2, "SAME"),
    "valid": (2, 6, 5, 3, 2, 3, 1, "VALID"),
    "explicit pads": (1, 5, 6, 2, 2, 3, 2, ((2, 0), (1, 1))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_im2col_equals_xla_convolution_and_its_gradients(case):
    batch, height, width, cin, cout, kernel, stride, padding = CASES[case]
    rng = np.random.default_rng(0)
    with float64():
        x = jnp.asarray(rng.normal(size=(batch, height, width, cin)))
        w = jnp.asarray(rng.normal(size=(kernel, kernel, cin, cout)))

        def xla(x, w):
            dims = ("NHWC", "HWIO", "NHWC")
            strides = (stride, stride)
            return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dims)

        def patches(x, w):
            return im2col.conv_im2col(x, w, (stride,) * 2, padding)

        want, got = jax.jit(xla)(x, w), jax.jit(patches)(x, w)
        assert got.shape == want.shape and got.dtype == jnp.float64
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        cotangent = jnp.asarray(rng.normal(size=want.shape))

        def grads(f):  # Of x and of the kernel.
            return jax.jit(jax.grad(lambda *a: jnp.vdot(f(*a), cotangent), argnums=(0, 1)))(x, w)

        for got, want in zip(grads(patches), grads(xla), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
