"""Spatial rearrangements of feature maps."""

import jax


def depth_to_space(x: jax.Array, block: int) -> jax.Array:
    """Moves channel blocks into space (pixel shuffle): [B, H, W, C·b²] -> [B, H·b, W·b, C].

    Output pixel (h·b + i, w·b + j, c) is input channel (i·b + j)·C + c at (h, w).
    """
    batch, height, width, channels = x.shape
    out_channels = channels // (block * block)
    x = x.reshape(batch, height, width, block, block, out_channels)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, height * block, width * block, out_channels)
