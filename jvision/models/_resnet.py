"""ResNet-18 trunks truncated at a given stride (the encoders of PatchVAE and its VAE baseline).

Children follow torchvision's order: conv1 (7×7, stride 2), bn1, relu, maxpool (3×3, stride 2),
layer1 (64), layer2 (128, stride 2), layer3 (256, stride 2), layer4 (512, stride 2). A trunk of
stride `scale` ∈ {4, 8, 16, 32} keeps the layers up to stride `scale`, so its output has
16·scale channels. Convolutions use Kaiming-normal (fan-out) initialisation, as PatchVAE's code.
"""

import math

import jax
from flax import nnx

from jvision.errors import UserError
from jvision.ops import pooling

SCALES = (4, 8, 16, 32)


def _conv(cin: int, cout: int, kernel: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        cin,
        cout,
        (kernel, kernel),
        strides=stride,
        padding=kernel // 2,
        use_bias=False,
        kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal"),
        rngs=rngs,
    )


def batch_norm(channels: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    # PyTorch's defaults: momentum 0.1 (Flax counts it the other way), eps 1e-5.
    return nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, rngs=rngs)


class BasicBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = _conv(cin, cout, 3, stride, rngs)
        self.bn1 = batch_norm(cout, rngs)
        self.conv2 = _conv(cout, cout, 3, 1, rngs)
        self.bn2 = batch_norm(cout, rngs)
        if stride != 1 or cin != cout:
            self.shortcut = nnx.List([_conv(cin, cout, 1, stride, rngs), batch_norm(cout, rngs)])
        else:
            self.shortcut = nnx.List([])

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        for layer in self.shortcut:
            x = layer(x)
        return jax.nn.relu(x + y)


class ResNetTrunk(nnx.Module):
    """[B, H, W, C] -> [B, H/scale, W/scale, 16·scale]."""

    def __init__(self, in_channels: int, scale: int, *, rngs: nnx.Rngs):
        if scale not in SCALES:
            raise UserError(f"model.scale {scale} is not one of {SCALES}")
        self.conv1 = _conv(in_channels, 64, 7, 2, rngs)
        self.bn1 = batch_norm(64, rngs)
        widths = (64, 128, 256, 512)[: int(math.log2(scale)) - 1]
        cins = (64, *widths[:-1])
        self.layers = nnx.List(
            [
                nnx.List(
                    [
                        BasicBlock(cin, cout, 1 if i == 0 else 2, rngs=rngs),
                        BasicBlock(cout, cout, 1, rngs=rngs),
                    ]
                )
                for i, (cin, cout) in enumerate(zip(cins, widths, strict=True))
            ]
        )
        self.out_channels = widths[-1]

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        x = pooling.max_pool(x, window=3, stride=2, padding=1)
        for layer in self.layers:
            for block in layer:
                x = block(x)
        return x
