"""Transposed convolution with a fast kernel gradient on XLA:CPU.

XLA:CPU differentiates `lax.conv_transpose` with respect to its kernel through a convolution
with a dilated kernel that it runs 11-26× slower than PyTorch's (measured for PatchVAE's decoder
layers, `benchmarks/conv_gradients.py`). The kernel gradient is a sum, for every tap t of the
kernel, of input × output-gradient products: output o = pad + stride·i - t receives input i
through tap t, so

    dW[t] = Σ_{b, i} x[b, i] ⊗ g[b, pad + stride·i - t]

(in 2-D, one such term per (ty, tx)): one strided slice of the output gradient and one matmul per
tap. `conv_transpose` computes exactly `lax.conv_transpose` (`transpose_kernel=False`, NHWC/HWIO,
as Flax's `ConvTranspose`), with this kernel gradient; `ConvTranspose` is Flax's module (same
parameters, same checkpoints) calling it.
"""

import math
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _leading_pad(kernel: int, stride: int, padding) -> int:
    """How many rows `lax.conv_transpose` pads its dilated input with before the first one."""
    if not isinstance(padding, str):
        return padding[0]
    if padding == "SAME":
        return kernel - 1 if stride > kernel - 1 else math.ceil((kernel + stride - 2) / 2)
    if padding == "VALID":
        return kernel - 1
    raise ValueError(f"padding {padding!r}")


def _forward(x, kernel, strides, padding):
    return jax.lax.conv_transpose(x, kernel, strides, padding, dimension_numbers=DIMENSIONS)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_transpose(x: jax.Array, kernel: jax.Array, strides: tuple, padding) -> jax.Array:
    """`lax.conv_transpose(x [B, H, W, Cin], kernel [kh, kw, Cin, Cout], strides, padding)`;
    `padding` is "SAME", "VALID" or ((lo, hi), (lo, hi))."""
    return _forward(x, kernel, strides, padding)


def _conv_transpose_fwd(x, kernel, strides, padding):
    return _forward(x, kernel, strides, padding), (x, kernel)


def _conv_transpose_bwd(strides, padding, residuals, g):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda x: _forward(x, kernel, strides, padding), x)
    (dx,) = input_vjp(g)
    kh, kw = kernel.shape[:2]
    (sy, sx), (_, height, width, _) = strides, x.shape
    pads = [
        _leading_pad(k, s, p)
        for k, s, p in zip(
            (kh, kw),
            (sy, sx),
            (padding,) * 2 if isinstance(padding, str) else padding,
            strict=True,
        )
    ]
    # Tap (ty, tx) reads g at rows pads[0] - ty + sy·i (i < height), columns likewise: zero
    # margins just wide enough that every tap's slice lies inside (out of range = no contribution).
    reach = [
        (max(0, k - 1 - p), max(0, p + s * (n - 1) - (size - 1)))
        for k, p, s, n, size in zip(
            (kh, kw), pads, (sy, sx), (height, width), g.shape[1:3], strict=True
        )
    ]
    padded = jnp.pad(g, ((0, 0), *reach, (0, 0)))
    taps = []
    for ty in range(kh):
        for tx in range(kw):
            top, left = reach[0][0] + pads[0] - ty, reach[1][0] + pads[1] - tx
            window = padded[
                :, top : top + sy * (height - 1) + 1 : sy, left : left + sx * (width - 1) + 1 : sx
            ]
            taps.append(jnp.einsum("bijc,bijo->co", x, window))
    dkernel = jnp.stack(taps).reshape(kh, kw, *taps[0].shape)
    return dx, dkernel.astype(kernel.dtype)


conv_transpose.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


class ConvTranspose(nnx.ConvTranspose):
    """`nnx.ConvTranspose` (NHWC, no mask, no kernel dilation) through `conv_transpose`."""

    def __call__(self, inputs: jax.Array) -> jax.Array:
        strides = self.strides or 1
        strides = (strides,) * 2 if isinstance(strides, int) else tuple(strides)
        padding = self.padding if isinstance(self.padding, str) else tuple(map(tuple, self.padding))
        kernel = self.kernel[...]
        if self.dtype is not None:  # The compute dtype (`model.dtype`), as Flax's layers.
            inputs, kernel = inputs.astype(self.dtype), kernel.astype(self.dtype)
        y = conv_transpose(inputs, kernel, strides, padding)
        return y + self.bias[...].astype(y.dtype) if self.bias is not None else y
