"""The encoding detector's network: a shared conv encoder, the exemplar VAE's decoder, the response
adjustment, and the exemplar bank (see the family's docstring, `jvision.models.encoding_detector`).
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jvision.ops import conv_transpose, correlation, distributions, precision


class Calibrated(nnx.Variable):
    """State computed from data after training (not trained by the optimizer)."""


NORMS = ("batch", "group")
GROUPS = 4


def norm_layer(kind: str, channels: int, rngs: nnx.Rngs) -> nnx.Module:
    """pytlib's BatchNorm (PyTorch defaults: momentum 0.1, which Flax counts the other way, eps
    1e-5), or GroupNorm (statistics per example: the same at training and at inference)."""
    if kind == "batch":
        return nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, rngs=rngs)
    return nnx.GroupNorm(channels, num_groups=min(GROUPS, channels), epsilon=1e-5, rngs=rngs)


class Encoder(nnx.Module):
    """[B, H, W, C] -> [B, h, w, widths[-1]]: valid 3×3 convs, each normalised, ReLU between."""

    def __init__(self, channels: int, widths, strides, norm: str, *, rngs: nnx.Rngs):
        cins = (channels, *widths[:-1])
        self.convs = nnx.List(
            [
                nnx.Conv(ci, co, (3, 3), strides=s, padding="VALID", rngs=rngs)
                for ci, co, s in zip(cins, widths, strides, strict=True)
            ]
        )
        self.norms = nnx.List([norm_layer(norm, co, rngs) for co in widths])

    def __call__(self, x: jax.Array) -> jax.Array:
        for index, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = norm(conv(x))
            if index < len(self.convs) - 1:
                x = jax.nn.relu(x)
        return x


def _sizes(size: int, strides) -> list[int]:
    sizes = [size]
    for stride in strides:
        sizes.append((sizes[-1] - 3) // stride + 1)
    return sizes


class Decoder(nnx.Module):
    """The encoder mirrored with transposed convs, each layer landing on the encoder's size (the
    role of PyTorch's output_padding); the norm after every layer (pytlib's BatchNorm), ReLU
    between. With GroupNorm the last layer has none: per-image statistics of a 1-channel output
    would pin every reconstruction's logits to one mean and spread."""

    def __init__(
        self, channels: int, widths, strides, image_size: int, norm: str, *, rngs: nnx.Rngs
    ):
        sizes = _sizes(image_size, strides)  # Encoder sizes, input first.
        couts = (channels, *widths[:-1])  # Layer i of the encoder maps couts[i] -> widths[i].
        layers = []
        for index in reversed(range(len(strides))):
            produced = (sizes[index + 1] - 1) * strides[index] + 3
            extra = sizes[index] - produced  # 0 or 1.
            padding = ((2, 2 + extra), (2, 2 + extra))
            layers.append(
                conv_transpose.ConvTranspose(
                    widths[index],
                    couts[index],
                    (3, 3),
                    strides=strides[index],
                    padding=padding,
                    rngs=rngs,
                )
            )
        self.layers = nnx.List(layers)
        normed = layers if norm == "batch" else layers[:-1]
        self.norms = nnx.List([norm_layer(norm, layer.out_features, rngs) for layer in normed])

    def __call__(self, x: jax.Array) -> jax.Array:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.norms):
                x = self.norms[index](x)
            if index < len(self.layers) - 1:
                x = jax.nn.relu(x)
        return x


class EncodingDetector(nnx.Module):
    """The encoder φ, the VAE on exemplar maps, the response adjustment (gain, bias) and the
    exemplar bank of `num_classes` mean exemplar maps."""

    def __init__(
        self,
        channels: int,
        widths: tuple[int, ...],
        strides: tuple[int, ...],
        norm: str,
        exemplar_size: int,
        latent_size: int,
        num_classes: int,
        *,
        rngs: nnx.Rngs,
    ):
        self.exemplar_size = exemplar_size
        self.strides = strides
        self.num_classes = num_classes
        cells = correlation.feature_size(exemplar_size, strides)
        self.map_shape = (cells, cells, widths[-1])
        features = cells * cells * widths[-1]
        linear = functools.partial(nnx.Linear, use_bias=False, rngs=rngs)
        self.encoder = Encoder(channels, widths, strides, norm, rngs=rngs)
        self.to_mean = linear(features, latent_size)
        self.to_logvar = linear(features, latent_size)
        self.expand = linear(latent_size, features)
        self.decoder = Decoder(channels, widths, strides, exemplar_size, norm, rngs=rngs)
        self.response_gain = nnx.Param(jnp.float32(1.0 / features))
        self.response_bias = nnx.Param(jnp.float32(0.0))
        self.bank = Calibrated(jnp.zeros((self.num_classes, *self.map_shape)))
        self.bank_counts = Calibrated(jnp.zeros((self.num_classes,)))

    def vae(self, exemplar_map: jax.Array, key: jax.Array | None):
        """Reconstruction logits of exemplars from their maps; z is the mean when key is None."""
        flat = jax.nn.relu(exemplar_map).reshape(exemplar_map.shape[0], -1)
        mean, logvar = precision.float32((self.to_mean(flat), self.to_logvar(flat)))
        z = mean if key is None else distributions.reparameterized_sample(key, mean, logvar)
        hidden = jax.nn.relu(self.expand(z)).reshape(-1, *self.map_shape)
        return precision.float32(self.decoder(hidden)), mean, logvar

    def responses(self, correlations: jax.Array, adjust: bool) -> jax.Array:
        """Response logits from correlation sums: `gain · sums + bias`, or the raw sums when not
        `adjust` (pytlib's)."""
        if not adjust:
            return correlations
        return self.response_gain[...] * correlations + self.response_bias[...]

    def padding(self) -> int:
        """Pixels added around a scene so every pixel can be a window centre."""
        jump, field = correlation.stack_geometry(self.strides)
        extent = jump * (self.map_shape[0] - 1) + field
        return (extent - 1) // 2

    def heat_logits(self, images: jax.Array, method: str, adjust: bool) -> jax.Array:
        """Scenes [B, H, W, C] -> per-class response logits [B, R, R', classes]; cell (i, j)
        compares the window centred on pixel (jump·i, jump·j). `method`: how to correlate
        (`correlation.METHODS`); `adjust`: as `responses`."""
        pad = self.padding()
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        sums = correlation.correlate_bank(self.encoder(padded), self.bank[...], method)
        return self.responses(sums, adjust)
