"""PatchVAE's two models, with the same methods: `PatchVAE` (parts) and `GlobalVAE` (its matched
baseline). The family (`jvision.models.patchvae`) calls these methods and never asks which model
it holds; `Sampling` carries the config's settings that a forward pass needs.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jvision.models import _resnet
from jvision.ops import conv_transpose, distributions, precision


def temperature(step, initial: float, anneal: float, minimum: float):
    """The authors' compounding schedule at (0-based) train step `step`.

    Their counter s = step + 1; at every s ≡ 1 (mod 1000) they set τ ← max(τ·exp(-anneal·s),
    minimum), so τ(s) = max(initial · exp(-anneal · Σ_{j=0..J} (1000·j + 1)), minimum),
    J = ⌊(s - 1) / 1000⌋.
    """
    updates = jnp.asarray(step // 1000, float)  # J, as a float: 1000·J² overflows int32.
    exponent = (updates + 1) + 500 * updates * (updates + 1)
    return jnp.maximum(initial * jnp.exp(-anneal * exponent), minimum)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """What a sampled forward pass takes from the config: the relaxed Bernoulli's temperature at
    this step, straight-through hard samples or not, and the occurrence prior."""

    temperature: jax.Array
    hard: bool
    occurrence_prior: float


class PyramidDecoder(nnx.Module):
    """1×1 transposed conv to ngf·2^(k-1) channels, then k-1 stride-2 4×4 transposed convs halving
    the width, each with BatchNorm and LeakyReLU(0.2), then a 4×4 stride-2 one to the image and
    tanh; k = log2(scale) doublings."""

    def __init__(
        self, latent_channels: int, out_channels: int, ngf: int, scale: int, *, rngs: nnx.Rngs
    ):
        doublings = int(math.log2(scale))
        widths = [ngf * 2**i for i in range(doublings - 1, -1, -1)]
        self.project = conv_transpose.ConvTranspose(
            latent_channels, widths[0], (1, 1), use_bias=False, rngs=rngs
        )
        self.project_norm = _resnet.batch_norm(widths[0], rngs)
        self.ups = nnx.List(
            [
                conv_transpose.ConvTranspose(
                    cin, cout, (4, 4), strides=2, padding="SAME", use_bias=False, rngs=rngs
                )
                for cin, cout in zip(widths[:-1], widths[1:], strict=True)
            ]
        )
        self.norms = nnx.List([_resnet.batch_norm(c, rngs) for c in widths[1:]])
        self.to_image = conv_transpose.ConvTranspose(
            widths[-1], out_channels, (4, 4), strides=2, padding="SAME", use_bias=False, rngs=rngs
        )

    def __call__(self, z: jax.Array) -> jax.Array:
        x = jax.nn.leaky_relu(self.project_norm(self.project(z)), 0.2)
        for up, norm in zip(self.ups, self.norms, strict=True):
            x = jax.nn.leaky_relu(norm(up(x)), 0.2)
        return jnp.tanh(precision.float32(self.to_image(x)))


def _head(cin: int, cout: int, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        cin,
        cout,
        (3, 3),
        padding="SAME",
        rngs=rngs,
        kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal"),
    )


def _appearance_samples(mean: jax.Array, variance: jax.Array, key: jax.Array, num_samples: int):
    """`num_samples` draws z ~ N(mean, variance) [K, *mean.shape] and their
    log q(z) − log N(z; 0, I) [K, B]."""
    batch_size = mean.shape[0]
    shape = (num_samples, *mean.shape)
    appearance = mean + jnp.sqrt(variance) * jax.random.normal(key, shape, mean.dtype)
    flat = appearance.reshape(num_samples, batch_size, -1)
    logvar = jnp.log(variance)
    log_ratio = distributions.gaussian_log_density(
        flat, mean.reshape(batch_size, -1), logvar.reshape(batch_size, -1)
    ) - distributions.gaussian_log_density(flat, 0.0, 0.0)
    return appearance, log_ratio


class PatchVAE(nnx.Module):
    """P parts: per part an appearance Gaussian pooled over locations and an occurrence map."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        scale: int,
        num_parts: int,
        part_size: int,
        ngf: int,
        *,
        rngs: nnx.Rngs,
    ):
        height, width, channels = image_shape
        self.scale = scale
        self.num_parts = num_parts
        self.part_size = part_size
        self.grid = (height // scale, width // scale)
        latent = num_parts * part_size
        self.encoder = _resnet.ResNetTrunk(channels, scale, rngs=rngs)
        features = self.encoder.out_channels
        self.appearance_mean = _head(features, latent, rngs)
        self.appearance_logvar = _head(features, latent, rngs)
        self.occurrence_logits = _head(features, num_parts, rngs)
        self.decoder = PyramidDecoder(latent, channels, ngf, scale, rngs=rngs)

    def posterior(self, images: jax.Array):
        """Appearance mean and variance [B, P, L] and occurrence logits [B, h, w, P]."""
        f = self.encoder(images)
        batch, h, w, _ = f.shape
        heads = (self.appearance_mean(f), self.appearance_logvar(f), self.occurrence_logits(f))
        mean, logvar, logits = precision.float32(heads)  # Of any compute dtype.
        mean = mean.reshape(batch, h, w, self.num_parts, self.part_size)
        variance = jnp.clip(jnp.exp(logvar), 1e-7, 1e7).reshape(mean.shape)
        weights = jax.lax.stop_gradient(jax.nn.sigmoid(logits))[..., None]  # [B, h, w, P, 1]
        total = weights.sum(axis=(1, 2)) + 1e-7
        pooled_mean = (weights * mean).sum(axis=(1, 2)) / total
        pooled_variance = ((weights * variance).sum(axis=(1, 2)) + 1e-7) / total
        return pooled_mean, pooled_variance, logits

    def decode(self, appearance: jax.Array, occurrence: jax.Array) -> jax.Array:
        """appearance [B, P, L] × occurrence [B, h, w, P] -> images [B, H, W, C] in [-1, 1]."""
        z = occurrence[..., None] * appearance[:, None, None]  # [B, h, w, P, L]
        return self.decoder(z.reshape(*z.shape[:3], -1))

    def __call__(self, images: jax.Array, key: jax.Array, sampling: Sampling):
        """A sampled reconstruction [B, H, W, C] and the KL terms {kl_appearance, kl_occurrence}
        [B] of the posterior against the priors."""
        mean, variance, logits = self.posterior(images)
        appearance_key, occurrence_key = jax.random.split(key)
        appearance = mean + jnp.sqrt(variance) * jax.random.normal(appearance_key, mean.shape)
        occurrence = distributions.relaxed_bernoulli_sample(
            occurrence_key, logits, sampling.temperature
        )
        if sampling.hard:  # Straight-through: binary forward, relaxed gradient.
            occurrence = occurrence + jax.lax.stop_gradient((logits > 0) - occurrence)
        kls = {
            "kl_appearance": distributions.gaussian_kl_standard_normal(mean, jnp.log(variance)),
            "kl_occurrence": distributions.bernoulli_kl(
                jax.nn.sigmoid(logits), sampling.occurrence_prior
            ),
        }
        return self.decode(appearance, occurrence), kls

    def importance_samples(self, images: jax.Array, key, num_samples: int, prior: float):
        """Decoded posterior samples [K·B, H, W, C] (appearances, and occurrences sampled as hard
        0/1) and their log q(z | x) − log p(z) [K, B]."""
        batch_size = images.shape[0]
        appearance_key, occurrence_key = jax.random.split(key)
        mean, variance, logits = self.posterior(images)
        appearance, log_ratio = _appearance_samples(mean, variance, appearance_key, num_samples)
        probabilities = jax.nn.sigmoid(logits)
        occurrence = jax.random.bernoulli(
            occurrence_key, probabilities, (num_samples, *logits.shape)
        )
        occurrence = occurrence.astype(mean.dtype)
        log_q = occurrence * jax.nn.log_sigmoid(logits) + (1 - occurrence) * jax.nn.log_sigmoid(
            -logits
        )
        log_p = occurrence * jnp.log(prior) + (1 - occurrence) * jnp.log1p(-prior)
        log_ratio += (log_q - log_p).reshape(num_samples, batch_size, -1).sum(-1)
        decoded = self.decode(
            appearance.reshape(-1, *mean.shape[1:]), occurrence.reshape(-1, *logits.shape[1:])
        )
        return decoded, log_ratio

    def codes(self, images: jax.Array):
        """`appearance` [B, P, L] (posterior means) and `occurrence` [B, h, w, P]
        (probabilities), and the means decoded with each part present where its probability
        exceeds 1/2 (images in [-1, 1])."""
        mean, _, logits = self.posterior(images)
        reconstruction = self.decode(mean, (logits > 0).astype(mean.dtype))
        return {"appearance": mean, "occurrence": jax.nn.sigmoid(logits)}, reconstruction

    def pictures(self, images: jax.Array) -> dict[str, jax.Array]:
        """Occurrence maps per part over the first images [0, 1], and each part's
        highest-scoring patches."""
        _, _, logits = self.posterior((images - 0.5) / 0.5)
        probabilities = jax.nn.sigmoid(logits)  # [B, h, w, P]
        batch, h, w, parts = probabilities.shape
        rows = min(8, batch)
        maps = jnp.repeat(jnp.repeat(probabilities[:rows], self.scale, 1), self.scale, 2)
        gray = jnp.repeat(images[:rows], 3 // images.shape[-1], axis=-1)[:, None]  # [R, 1, H, W, 3]
        tint = jnp.stack([maps, jnp.zeros_like(maps), jnp.zeros_like(maps)], -1)  # Red.
        overlays = 0.5 * gray + 0.5 * tint.transpose(0, 3, 1, 2, 4)  # [R, P, H, W, 3]
        occurrence = jnp.concatenate([gray, overlays], axis=1)

        # Each part's top patches: the cells (scale×scale, with context) where it is likeliest.
        patch = 2 * self.scale
        flat = probabilities.transpose(3, 0, 1, 2).reshape(parts, -1)  # [P, B·h·w]
        shown = min(8, flat.shape[1])
        _, best = jax.lax.top_k(flat, shown)
        index, cy, cx = best // (h * w), (best % (h * w)) // w, best % w
        margin = (self.scale // 2,) * 2
        padded = jnp.pad(images, ((0, 0), margin, margin, (0, 0)))

        def crop(i, y, x):
            return jax.lax.dynamic_slice(
                padded[i], (y * self.scale, x * self.scale, 0), (patch, patch, images.shape[-1])
            )

        patches = jax.vmap(jax.vmap(crop))(index, cy, cx)  # [P, shown, patch, patch, C]
        return {"part_occurrence": occurrence, "part_patches": patches}


class GlobalVAE(nnx.Module):
    """The baseline: the same trunk, a 1×1 reduction to ngf channels (BatchNorm, ReLU), a global
    Gaussian of P·L dims from a grid-sized conv, decoded by a grid-sized transposed conv (to ngf,
    BatchNorm, LeakyReLU) and the same pyramid."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        scale: int,
        num_parts: int,
        part_size: int,
        ngf: int,
        *,
        rngs: nnx.Rngs,
    ):
        height, width, channels = image_shape
        self.scale = scale
        self.grid = (height // scale, width // scale)
        self.num_parts = num_parts
        self.part_size = part_size
        latent = num_parts * part_size
        self.encoder = _resnet.ResNetTrunk(channels, scale, rngs=rngs)
        self.reduce = nnx.Conv(self.encoder.out_channels, ngf, (1, 1), use_bias=False, rngs=rngs)
        self.reduce_norm = _resnet.batch_norm(ngf, rngs)
        self.to_mean = nnx.Conv(ngf, latent, self.grid, padding="VALID", rngs=rngs)
        self.to_logvar = nnx.Conv(ngf, latent, self.grid, padding="VALID", rngs=rngs)
        self.expand = conv_transpose.ConvTranspose(
            latent, ngf, self.grid, padding="VALID", use_bias=False, rngs=rngs
        )
        self.expand_norm = _resnet.batch_norm(ngf, rngs)
        self.decoder = PyramidDecoder(ngf, channels, ngf, scale, rngs=rngs)

    def posterior(self, images: jax.Array):
        """The latent's mean and variance [B, P·L]."""
        f = jax.nn.relu(self.reduce_norm(self.reduce(self.encoder(images))))
        mean, logvar = precision.float32((self.to_mean(f), self.to_logvar(f)))
        mean = mean.reshape(images.shape[0], -1)
        variance = jnp.exp(logvar.reshape(images.shape[0], -1))
        return mean, variance

    def decode(self, z: jax.Array) -> jax.Array:
        """[B, P·L] -> images [B, H, W, C] in [-1, 1]."""
        h = jax.nn.leaky_relu(self.expand_norm(self.expand(z[:, None, None, :])), 0.2)
        return self.decoder(h)

    def __call__(self, images: jax.Array, key: jax.Array, sampling: Sampling):
        """A sampled reconstruction [B, H, W, C] and the KL term {kl_appearance} [B]."""
        del sampling  # No occurrences.
        mean, variance = self.posterior(images)
        z = mean + jnp.sqrt(variance) * jax.random.normal(key, mean.shape)
        kls = {"kl_appearance": distributions.gaussian_kl_standard_normal(mean, jnp.log(variance))}
        return self.decode(z), kls

    def importance_samples(self, images: jax.Array, key, num_samples: int, prior: float):
        """Decoded posterior samples [K·B, H, W, C] and their log q(z | x) − log p(z) [K, B]."""
        del prior  # No occurrences.
        appearance_key, _ = jax.random.split(key)
        mean, variance = self.posterior(images)
        appearance, log_ratio = _appearance_samples(mean, variance, appearance_key, num_samples)
        return self.decode(appearance.reshape(-1, mean.shape[-1])), log_ratio

    def codes(self, images: jax.Array):
        """`latent` [B, P·L] (the posterior mean) and its decoding (images in [-1, 1])."""
        mean, _ = self.posterior(images)
        return {"latent": mean}, self.decode(mean)

    def pictures(self, images: jax.Array) -> dict[str, jax.Array]:
        """None beyond the reconstructions: the baseline has no parts."""
        del images
        return {}
