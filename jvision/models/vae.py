"""Convolutional VAE (Kingma & Welling 2014) with a Bernoulli likelihood on binarized images.

The encoder and decoder follow pytlib's conv stacks (3×3 convs with BatchNorm and ReLU, strides
2-1-2, mirrored in the decoder), with SAME padding so 28×28 maps halve exactly. The decoder
upsamples with sub-pixel convolutions (a conv to C·s² channels, then depth-to-space) instead of
pytlib's transposed convs: the same family of maps, and on XLA:CPU about 8× faster to train (the
kernel gradient of a strided transposed conv is slow there). The loss is the negative ELBO summed
over pixels, in nats per image (pytlib averaged it per pixel instead).
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jvision import summaries
from jvision.models import _variational
from jvision.ops import distributions, precision, spatial


class UpConv(nnx.Module):
    """3×3 conv that upsamples by `stride`: [B, H, W, cin] -> [B, H·s, W·s, cout]."""

    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
        self.stride = stride
        self.conv = nnx.Conv(cin, cout * stride * stride, (3, 3), padding="SAME", rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return spatial.depth_to_space(self.conv(x), self.stride)


class ConvBlock(nnx.Module):
    """Conv (downsampling, or upsampling when `up`) -> BatchNorm -> ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, up: bool, *, rngs: nnx.Rngs):
        if up:
            self.conv = UpConv(cin, cout, stride, rngs=rngs)
        else:
            self.conv = nnx.Conv(cin, cout, (3, 3), strides=stride, padding="SAME", rngs=rngs)
        self.norm = nnx.BatchNorm(cout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.norm(self.conv(x)))


class VAE(nnx.Module):
    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent_dim: int,
        widths: tuple[int, ...],
        strides: tuple[int, ...],
        *,
        rngs: nnx.Rngs,
    ):
        height, width, channels = image_shape
        total_stride = math.prod(strides)
        if height % total_stride or width % total_stride:
            raise ValueError(
                f"image {height}×{width} is not divisible by the stride {total_stride}"
            )
        self.image_shape = image_shape
        self.latent_dim = latent_dim
        self.feature_shape = (height // total_stride, width // total_stride, widths[-1])
        features = self.feature_shape[0] * self.feature_shape[1] * widths[-1]

        cins = (channels, *widths[:-1])
        self.encoder = nnx.List(
            [
                ConvBlock(ci, co, s, False, rngs=rngs)
                for ci, co, s in zip(cins, widths, strides, strict=True)
            ]
        )
        self.posterior = nnx.Linear(features, 2 * latent_dim, rngs=rngs)
        self.expand = nnx.Linear(latent_dim, features, rngs=rngs)
        # Mirror of the encoder; its first block is replaced by `to_logits`.
        self.decoder = nnx.List(
            [
                ConvBlock(ci, co, s, True, rngs=rngs)
                for ci, co, s in zip(widths[:0:-1], cins[:0:-1], strides[:0:-1], strict=True)
            ]
        )
        self.to_logits = UpConv(widths[0], channels, strides[0], rngs=rngs)

    def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[B, H, W, C] in [0, 1] -> posterior mean and log-variance, each [B, latent_dim]."""
        h = images
        for block in self.encoder:
            h = block(h)
        posterior = precision.float32(self.posterior(h.reshape(h.shape[0], -1)))
        mean, logvar = jnp.split(posterior, 2, axis=-1)
        return mean, logvar

    def decode(self, z: jax.Array) -> jax.Array:
        """[B, latent_dim] -> Bernoulli logits [B, H, W, C]."""
        h = jax.nn.relu(self.expand(z)).reshape(z.shape[0], *self.feature_shape)
        for block in self.decoder:
            h = block(h)
        return precision.float32(self.to_logits(h))

    def __call__(self, images: jax.Array, key: jax.Array):
        mean, logvar = self.encode(images)
        z = distributions.reparameterized_sample(key, mean, logvar)
        return self.decode(z), mean, logvar


def build(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> VAE:
    return VAE(
        tuple(config.image_shape),
        config.latent_dim,
        tuple(config.widths),
        tuple(config.strides),
        rngs=rngs,
    )


def _per_example_terms(model: VAE, batch, key) -> dict[str, jax.Array]:
    images = batch["image"]
    logits, mean, logvar = model(images, key)
    recon = distributions.bernoulli_nll(logits, images)
    kl = distributions.gaussian_kl_standard_normal(mean, logvar)
    return {"nelbo_nats": recon + kl, "recon_nats": recon, "kl_nats": kl}


train_loss, eval_metrics = _variational.nelbo_objective(_per_example_terms)


def log_importance_weights(config, model: VAE, batch, key, step, num_samples: int) -> jax.Array:
    """[B, K] log p(x, z_k) − log q(z_k | x) for K = `num_samples` posterior samples z_k."""
    del config, step
    images = batch["image"]
    mean, logvar = model.encode(images)  # [B, Z]
    z = distributions.reparameterized_sample(
        key, jnp.broadcast_to(mean, (num_samples, *mean.shape)), logvar
    )
    logits = model.decode(z.reshape(-1, model.latent_dim))  # [K·B, H, W, C]
    targets = jnp.broadcast_to(images, (num_samples, *images.shape)).reshape(logits.shape)
    log_likelihood = -distributions.bernoulli_nll(logits, targets).reshape(num_samples, -1)
    log_prior = distributions.gaussian_log_density(z, 0.0, 0.0)
    log_posterior = distributions.gaussian_log_density(z, mean, logvar)
    return (log_likelihood + log_prior - log_posterior).T


def predict(config, model: VAE, batch, step):
    """The posterior (`mean`, `logvar` [B, latent]) and the reconstruction of its mean
    (`reconstruction` [B, H, W, C], Bernoulli means)."""
    del config, step
    mean, logvar = model.encode(batch["image"])
    return {"reconstruction": jax.nn.sigmoid(model.decode(mean)), "mean": mean, "logvar": logvar}


def image_summaries(config, model: VAE, batch, key, step):
    """Inputs beside their reconstructions (posterior mean decoded), and prior samples."""
    images = batch["image"]
    reconstruction = predict(config, model, batch, step)["reconstruction"]
    z = jax.random.normal(key, (images.shape[0], model.latent_dim))
    samples = jax.nn.sigmoid(model.decode(z))
    return {"pairs": jnp.stack([images, reconstruction], axis=1), "samples": samples}


def draw_summaries(config, outputs):
    """Rows of 8 (input, reconstruction) pairs under a row naming them, and rows of 16
    samples."""
    del config
    pairs = summaries.as_rows(outputs["pairs"], 8)  # [rows, pairs, 2, H, W, C]
    rows = pairs.reshape(pairs.shape[0], -1, *pairs.shape[3:])
    return {
        "reconstructions": summaries.with_column_labels(rows, ["in", "out"]),
        "samples": summaries.as_rows(outputs["samples"], 16),
    }
