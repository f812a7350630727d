"""Max-pooling whose gradient is elementwise work.

XLA:CPU expands the gradient of `lax.reduce_window`'s max (a select-and-scatter) into four
full-size iotas, a variadic reduce-window that tracks each window's argmax, and a scatter: for the
ResNet stem's 3×3 stride-2 pool (PatchVAE, the transfer classifier) and the SSD's 2×2 pools, that
costs more than the convolutions around them. Here the pool is the maximum of its window's
strided views of the padded input, and the gradient walks the same views: each output's gradient
goes to the first position of its window, in row-major order, that holds the maximum (the
position `lax.reduce_window`'s gradient and PyTorch's `F.max_pool2d` pick), and a view's share is
put back in place with an interior-padded `lax.pad` (the transpose of a strided slice). Values
and routing equal `lax.reduce_window`'s (tests/test_pooling.py); where windows overlap, a position
that is the maximum of three or four windows sums their gradients in another order. A window whose
maximum is NaN gives its gradient to its first NaN, as PyTorch does. Reverse mode only (a
`custom_vjp`): `jax.jvp` and `jax.jacfwd` do not go through it.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax


def _output_size(size: int, window: int, stride: int, padding: int) -> int:
    if padding > window // 2:  # PyTorch's rule: otherwise a window can hold only padding.
        raise ValueError(f"max_pool: padding {padding} above half the window {window}")
    out = (size + 2 * padding - window) // stride + 1
    if out < 1:
        raise ValueError(f"max_pool: a {window}-wide window does not fit {size} + 2·{padding}")
    return out


def _views(padded: jax.Array, window: int, stride: int, out_h: int, out_w: int):
    """Yields (i, j, view): view[b, y, x, c] = padded[b, y·stride + i, x·stride + j, c]."""
    batch, _, _, channels = padded.shape
    for i in range(window):
        for j in range(window):
            end = (batch, i + stride * (out_h - 1) + 1, j + stride * (out_w - 1) + 1, channels)
            yield i, j, lax.slice(padded, (0, i, j, 0), end, (1, stride, stride, 1))


def _pad(x: jax.Array, padding: int) -> jax.Array:
    pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return jnp.pad(x, pads, constant_values=-jnp.inf)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
    """Max over `window`×`window` windows of [B, H, W, C] maps, `stride` apart, the maps padded
    by `padding` ≤ window // 2 on each side (the padding never wins). Equal to
    `lax.reduce_window` with `lax.max`, gradient included."""
    return _forward(x, window, stride, padding)[0]


def _forward(x, window, stride, padding):
    out_h = _output_size(x.shape[1], window, stride, padding)
    out_w = _output_size(x.shape[2], window, stride, padding)
    views = _views(_pad(x, padding), window, stride, out_h, out_w)
    pooled = functools.reduce(jnp.maximum, (view for _, _, view in views))
    return pooled, (x, pooled)


def _backward(window, stride, padding, residuals, grad):
    x, pooled = residuals
    padded = _pad(x, padding)
    out_h, out_w = pooled.shape[1:3]
    total = jnp.zeros_like(padded)
    taken = jnp.zeros(pooled.shape, bool)
    for i, j, view in _views(padded, window, stride, out_h, out_w):
        hit = ((view == pooled) | (jnp.isnan(view) & jnp.isnan(pooled))) & ~taken
        taken = taken | hit
        share = jnp.where(hit, grad, jnp.zeros_like(grad))
        last_h = i + stride * (out_h - 1)
        last_w = j + stride * (out_w - 1)
        pads = (
            (0, 0, 0),
            (i, padded.shape[1] - 1 - last_h, stride - 1),
            (j, padded.shape[2] - 1 - last_w, stride - 1),
            (0, 0, 0),
        )
        total = total + lax.pad(share, jnp.zeros((), share.dtype), pads)
    height, width = x.shape[1:3]
    return (total[:, padding : padding + height, padding : padding + width],)


max_pool.defvjp(_forward, _backward)
