"""Cross-correlation of feature maps (SiamFC's "exemplar slid over the search image").

`correlate` slides each example's exemplar map over its own search map (a different kernel per
example): one grouped convolution with `feature_group_count = batch` (the batch becomes the
channel groups of a single image), or the same in the Fourier domain. `correlate_bank` slides a
fixed bank of class exemplars over every image: one ordinary convolution with the bank as kernel.
Both are "valid": a map H×W and an exemplar h×w give (H-h+1)×(W-w+1) responses, the sum over
the exemplar's cells and channels of exemplar × search (no flip, no normalisation).
"""

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("direct", "fft")


def _valid_conv(images: jax.Array, kernel: jax.Array, groups: int) -> jax.Array:
    return jax.lax.conv_general_dilated(
        images,
        kernel,
        window_strides=(1, 1),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
        precision=jax.lax.Precision.HIGHEST,
    )


def correlate_direct(search: jax.Array, exemplar: jax.Array) -> jax.Array:
    """search [B, H, W, C], exemplar [B, h, w, C] -> responses [B, H-h+1, W-w+1]."""
    batch, height, width, channels = search.shape
    # One image whose channels are (example, channel); one group per example.
    images = search.transpose(1, 2, 0, 3).reshape(1, height, width, batch * channels)
    kernel = exemplar.transpose(1, 2, 3, 0)  # [h, w, C (per group), B (one output per group)]
    return _valid_conv(images, kernel, batch)[0].transpose(2, 0, 1)


def correlate_fft(search: jax.Array, exemplar: jax.Array) -> jax.Array:
    """`correlate_direct` through real FFTs: O(H·W·log(H·W)·C) per example instead of
    O(H·W·h·w·C), which pays for large exemplars (pytlib's point for whole KITTI frames)."""
    _, height, width, _ = search.shape
    _, h, w, _ = exemplar.shape
    spectrum = jnp.fft.rfft2(search, axes=(1, 2))
    kernel = jnp.fft.rfft2(exemplar, s=(height, width), axes=(1, 2))
    # Correlation = convolution with the flipped kernel = product with the conjugate spectrum;
    # summing over channels first needs one inverse transform per example.
    product = jnp.sum(spectrum * jnp.conj(kernel), axis=-1)
    full = jnp.fft.irfft2(product, s=(height, width), axes=(1, 2))
    return full[:, : height - h + 1, : width - w + 1]


def correlate(search: jax.Array, exemplar: jax.Array, method: str = "direct") -> jax.Array:
    """Each example's exemplar over its own search map: [B, H, W, C], [B, h, w, C] -> [B, R, R']."""
    return {"direct": correlate_direct, "fft": correlate_fft}[method](search, exemplar)


def correlate_bank(images: jax.Array, bank: jax.Array, method: str = "direct") -> jax.Array:
    """Every exemplar of a bank over every image: images [B, H, W, C], bank [K, h, w, C] ->
    responses [B, H-h+1, W-w+1, K]."""
    if method == "direct":
        return _valid_conv(images, bank.transpose(1, 2, 3, 0), 1)
    _, height, width, _ = images.shape
    _, h, w, _ = bank.shape
    spectrum = jnp.fft.rfft2(images, axes=(1, 2))  # [B, H, W', C]
    kernels = jnp.fft.rfft2(bank, s=(height, width), axes=(1, 2))  # [K, H, W', C]
    product = jnp.einsum("bhwc,khwc->bhwk", spectrum, jnp.conj(kernels))
    full = jnp.fft.irfft2(product, s=(height, width), axes=(1, 2))
    return full[:, : height - h + 1, : width - w + 1]


# Geometry of a stack of k×k "valid" convolutions with the given strides (the siamese encoder):
# which input pixels a response cell compares.


def feature_size(size: int, strides: tuple[int, ...], kernel: int = 3) -> int:
    """The side of the feature map of a `size`-pixel input."""
    for stride in strides:
        size = (size - kernel) // stride + 1
    return size


def stack_geometry(strides: tuple[int, ...], kernel: int = 3) -> tuple[int, int]:
    """(jump, receptive field): feature cell u sees input pixels [jump·u, jump·u + field)."""
    jump, field = 1, 1
    for stride in strides:
        field += (kernel - 1) * jump
        jump *= stride
    return jump, field


def response_centres(
    search_size: int,
    exemplar_size: int,
    strides: tuple[int, ...],
    padding: int = 0,
    kernel: int = 3,
) -> np.ndarray:
    """The centre, in pixels of the (unpadded) search image, of the exemplar-sized window each
    response row/column compares; the search image was padded by `padding` on each side."""
    jump, field = stack_geometry(strides, kernel)
    exemplar_cells = feature_size(exemplar_size, strides, kernel)
    extent = jump * (exemplar_cells - 1) + field  # Input pixels an exemplar map spans.
    count = feature_size(search_size + 2 * padding, strides, kernel) - exemplar_cells + 1
    return jump * np.arange(count) + (extent - 1) / 2 - padding
