"""DRAW's Gaussian attention (Gregor et al. 2015, section 3.2, eqs. 19-29).

Pixel coordinates are 1-based (a = 1..A), the convention under which the paper's centre formula
g = (A+1)/2·(g̃+1) puts g̃ = 0 exactly at the image centre. Images are [B, H, W, C]; a glimpse
or a write patch is [B, N, N, C].
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

NUM_RAW_PARAMS = 5  # (g̃x, g̃y, log σ², log δ̃, log γ), a linear function of the decoder state.


class Window(NamedTuple):
    """One attention window per image, in pixel units; every field is [B]."""

    center_x: jax.Array
    center_y: jax.Array
    stride: jax.Array  # δ: distance between neighbouring filter centres.
    variance: jax.Array  # σ² of every filter.
    intensity: jax.Array  # γ.


def window_from_raw(raw: jax.Array, height: int, width: int, grid_size: int) -> Window:
    """Maps raw parameters [B, 5] to a window (eqs. 22-24)."""
    g_x, g_y, log_variance, log_stride, log_intensity = jnp.moveaxis(raw, -1, 0)
    stride_scale = (max(height, width) - 1) / max(grid_size - 1, 1)
    return Window(
        center_x=(width + 1) / 2 * (g_x + 1),
        center_y=(height + 1) / 2 * (g_y + 1),
        stride=stride_scale * jnp.exp(log_stride),
        variance=jnp.exp(log_variance),
        intensity=jnp.exp(log_intensity),
    )


def filterbank(
    center: jax.Array, stride: jax.Array, variance: jax.Array, grid_size: int, size: int
) -> jax.Array:
    """Row-normalised Gaussian filters along one image axis (eqs. 19-20, 25-26).

    Args:
      center, stride, variance: [B].
      grid_size: N, the number of filters.
      size: A (or B), the number of pixels along the axis.
    Returns:
      [B, N, size]; row i is a Gaussian centred at g + (i - N/2 - 0.5)·δ, i = 1..N, summing to 1.
    """
    offsets = jnp.arange(1, grid_size + 1, dtype=center.dtype) - grid_size / 2 - 0.5
    means = center[:, None] + offsets[None, :] * stride[:, None]  # [B, N]
    pixels = jnp.arange(1, size + 1, dtype=center.dtype)
    filters = jnp.exp(
        -jnp.square(pixels[None, None, :] - means[:, :, None]) / (2 * variance[:, None, None])
    )
    return filters / jnp.maximum(filters.sum(axis=-1, keepdims=True), 1e-8)


def filterbanks(window: Window, grid_size: int, height: int, width: int):
    """F_Y [B, N, H] and F_X [B, N, W] of a window."""
    f_y = filterbank(window.center_y, window.stride, window.variance, grid_size, height)
    f_x = filterbank(window.center_x, window.stride, window.variance, grid_size, width)
    return f_y, f_x


def read_glimpse(images: jax.Array, f_y: jax.Array, f_x: jax.Array, intensity: jax.Array):
    """γ · F_Y x F_Xᵀ (eq. 27): [B, H, W, C] -> [B, N, N, C]."""
    glimpse = jnp.einsum("bnh,bhwc,bmw->bnmc", f_y, images, f_x)
    return intensity[:, None, None, None] * glimpse


def write_patch(patch: jax.Array, f_y: jax.Array, f_x: jax.Array, intensity: jax.Array):
    """(1/γ) · F_Yᵀ w F_X (eq. 29): [B, N, N, C] -> [B, H, W, C].

    γ scales the small patch rather than the image-sized result: the same value, and the gradient
    with respect to γ then sums over N² rather than H·W products.
    """
    return jnp.einsum("bnh,bnmc,bmw->bhwc", f_y, patch / intensity[:, None, None, None], f_x)


def window_box(window: Window, grid_size: int) -> jax.Array:
    """The area a window covers, N·δ wide around its centre, as 0-based pixel boxes.

    Returns [B, 4] (ymin, xmin, ymax, xmax).
    """
    half = grid_size * window.stride / 2
    cy, cx = window.center_y - 1, window.center_x - 1  # 1-based centres -> 0-based pixels.
    return jnp.stack([cy - half, cx - half, cy + half, cx + half], axis=-1)
