"""A convolution written as one matmul over patches ("im2col"), the formulation
`conv_formulations.py` times against XLA:CPU's own convolution and PyTorch's.

A 2-D convolution of `x` [B, H, W, Cin] with a kernel [kh, kw, Cin, Cout] is, for every output
pixel, the dot product of the kh·kw·Cin input values under the kernel with the kernel: gathering
those values as kh·kw strided slices of the padded input, concatenated along the channels
([B, H', W', kh·kw·Cin]), makes the whole layer one matmul with the kernel reshaped to
[kh·kw·Cin, Cout]. Its gradients are autodiff's: the input gradient a matmul and the slices'
transposes (pads and adds), the kernel gradient one matmul of the patches with the output
gradient. The cost is the patches' memory (kh·kw times the input).

Not used by the models: measured per layer (docs/speed.md), it wins on 14 of their 25 layers by
up to 1.74x and loses on 11 by up to 1.80x, with no rule that separates them without fitting one
CPU's numbers. Tested equal to `lax.conv_general_dilated` (tests/test_im2col.py).
"""

import jax
import jax.numpy as jnp


def _pads(size: int, kernel: int, stride: int, padding) -> tuple[int, int]:
    """(before, after) padding of one axis, as `lax.conv_general_dilated` would apply it."""
    if isinstance(padding, str):
        if padding == "VALID":
            return 0, 0
        out = -(-size // stride)  # SAME: ceil(size / stride) outputs.
        total = max((out - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2
    return tuple(padding)


def patches(x: jax.Array, kernel_shape: tuple[int, int], strides, padding) -> jax.Array:
    """[B, H, W, C] -> [B, H', W', kh·kw·C]: the input under the kernel at each output pixel, taps
    in (ky, kx) order, channels innermost (the order of a [kh, kw, C, O] kernel reshaped)."""
    kh, kw = kernel_shape
    sy, sx = strides
    _, height, width, _ = x.shape
    pads = [_pads(height, kh, sy, padding[0] if not isinstance(padding, str) else padding)]
    pads.append(_pads(width, kw, sx, padding[1] if not isinstance(padding, str) else padding))
    padded = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    out_h = (height + sum(pads[0]) - kh) // sy + 1
    out_w = (width + sum(pads[1]) - kw) // sx + 1
    taps = [
        padded[:, ky : ky + sy * (out_h - 1) + 1 : sy, kx : kx + sx * (out_w - 1) + 1 : sx]
        for ky in range(kh)
        for kx in range(kw)
    ]
    return jnp.concatenate(taps, axis=-1)


def conv_im2col(x: jax.Array, kernel: jax.Array, strides=(1, 1), padding="SAME") -> jax.Array:
    """`lax.conv_general_dilated(x, kernel, strides, padding)` in NHWC / HWIO, as one matmul
    over `patches`; `padding` is "SAME", "VALID" or ((lo, hi), (lo, hi))."""
    kh, kw, cin, cout = kernel.shape
    columns = patches(x, (kh, kw), strides, padding)
    return columns @ kernel.reshape(kh * kw * cin, cout)
