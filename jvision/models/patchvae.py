"""PatchVAE (Gupta, Singh, Shrivastava, CVPR 2020) and its matched β-VAE baseline.

PatchVAE encodes an image as P parts. A truncated ResNet-18 gives a feature map f
[B, H/s, W/s, C]; three 3×3 heads give, per part, appearance means and log-variances (L each) and an
occurrence logit at every location.

- Occurrence z_occ: a relaxed Bernoulli sample per part and location at temperature τ (annealed,
  see `temperature`); optionally straight-through hard samples.
- Appearance z_app: one Gaussian per part per image, its mean and variance pooled over locations
  weighted by the occurrence probability (gradient stopped through the weights), sampled with the
  reparameterisation trick.
- Decoder input: z_app[p] · z_occ[p] at every location; a transposed-conv pyramid decodes it to the
  image (tanh).
- Loss per image: Σ(x̂ - x)² + β_app·KL_app + β_occ·KL_occ with a Bernoulli(1/P) occurrence prior
  (β_app = 1, β_occ = 10); optional edge-weighted reconstruction (a Laplacian mask).

The baseline (`model.kind='vae'`) has the same encoder and latent budget P·L as one global Gaussian.
Images are normalised to [-1, 1] ((x - 0.5) / 0.5), the range of the tanh output.

Differences from the authors' code: the decoder runs once per step (theirs ran twice, updating its
BatchNorm statistics twice); transposed convolutions use Flax's SAME alignment, with a kernel
gradient computed tap by tap (`jvision.ops.conv_transpose`: XLA:CPU's own is 10-150× slower).
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jvision import summaries
from jvision.errors import UserError
from jvision.models import _resnet
from jvision.ops import conv_transpose, distributions, precision

KINDS = ("patchvae", "vae")


def temperature(step, initial: float, anneal: float, minimum: float):
    """The authors' compounding schedule at (0-based) train step `step`.

    Their counter s = step + 1; at every s ≡ 1 (mod 1000) they set τ ← max(τ·exp(-anneal·s),
    minimum), so τ(s) = max(initial · exp(-anneal · Σ_{j=0..J} (1000·j + 1)), minimum),
    J = ⌊(s - 1) / 1000⌋.
    """
    updates = jnp.asarray(step // 1000, float)  # J, as a float: 1000·J² overflows int32.
    exponent = (updates + 1) + 500 * updates * (updates + 1)
    return jnp.maximum(initial * jnp.exp(-anneal * exponent), minimum)


def edge_weights(images: jax.Array, scale: int) -> jax.Array:
    """PatchVAE's edge mask: |Laplacian| (replicate-padded), summed over scale×scale cells,
    upsampled back, normalised to mean 1 per image and channel. [B, H, W, C] -> same shape."""
    padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    laplacian = (
        padded[:, :-2, 1:-1]
        + padded[:, 2:, 1:-1]
        + padded[:, 1:-1, :-2]
        + padded[:, 1:-1, 2:]
        - 4 * images
    )
    batch, height, width, channels = images.shape
    cells = (
        jnp.abs(laplacian)
        .reshape(batch, height // scale, scale, width // scale, scale, channels)
        .sum(axis=(2, 4))
    )
    mask = jnp.repeat(jnp.repeat(cells, scale, axis=1), scale, axis=2)
    mask = mask / jnp.maximum(mask.mean(axis=(1, 2), keepdims=True), 1e-12)
    return jax.lax.stop_gradient(mask)


def _set_loss_weights(model: nnx.Module, model_config: ml_collections.ConfigDict) -> None:
    model.beta_appearance = float(model_config.beta_appearance)
    model.beta_occurrence = float(model_config.beta_occurrence)
    model.edge_weighted = bool(model_config.edge_weighted)


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


class PatchVAE(nnx.Module):
    def __init__(self, model_config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        height, width, channels = model_config.image_shape
        _set_loss_weights(self, model_config)
        self.scale = model_config.scale
        self.num_parts = model_config.num_parts
        self.part_size = model_config.part_size
        self.grid = (height // self.scale, width // self.scale)
        self.hard = bool(model_config.hard)
        self.occurrence_prior = model_config.occurrence_prior or 1.0 / self.num_parts
        self.schedule = (
            model_config.initial_temperature,
            model_config.anneal,
            model_config.min_temperature,
        )
        latent = self.num_parts * self.part_size
        self.encoder = _resnet.ResNetTrunk(channels, self.scale, rngs=rngs)
        features = self.encoder.out_channels
        self.appearance_mean = _head(features, latent, rngs)
        self.appearance_logvar = _head(features, latent, rngs)
        self.occurrence_logits = _head(features, self.num_parts, rngs)
        self.decoder = PyramidDecoder(latent, channels, model_config.ngf, self.scale, rngs=rngs)

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

    def temperature(self, step: jax.Array) -> jax.Array:
        """The relaxed Bernoulli's temperature after `step` train steps."""
        return temperature(step, *self.schedule)

    def __call__(self, images: jax.Array, key: jax.Array, step: jax.Array):
        mean, variance, logits = self.posterior(images)
        appearance_key, occurrence_key = jax.random.split(key)
        appearance = mean + jnp.sqrt(variance) * jax.random.normal(appearance_key, mean.shape)
        occurrence = distributions.relaxed_bernoulli_sample(
            occurrence_key, logits, self.temperature(step)
        )
        if self.hard:  # Straight-through: binary forward, relaxed gradient.
            occurrence = occurrence + jax.lax.stop_gradient((logits > 0) - occurrence)
        return self.decode(appearance, occurrence), mean, variance, logits


class GlobalVAE(nnx.Module):
    """The baseline: the same trunk, a 1×1 reduction to ngf channels (BatchNorm, ReLU), a global
    Gaussian of P·L dims from a grid-sized conv, decoded by a grid-sized transposed conv (to ngf,
    BatchNorm, LeakyReLU) and the same pyramid."""

    def __init__(self, model_config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        height, width, channels = model_config.image_shape
        _set_loss_weights(self, model_config)
        self.scale = model_config.scale
        self.grid = (height // self.scale, width // self.scale)
        self.num_parts = model_config.num_parts
        self.part_size = model_config.part_size
        latent, ngf = self.num_parts * self.part_size, model_config.ngf
        self.encoder = _resnet.ResNetTrunk(channels, self.scale, rngs=rngs)
        self.reduce = nnx.Conv(self.encoder.out_channels, ngf, (1, 1), use_bias=False, rngs=rngs)
        self.reduce_norm = _resnet.batch_norm(ngf, rngs)
        self.to_mean = nnx.Conv(ngf, latent, self.grid, padding="VALID", rngs=rngs)
        self.to_logvar = nnx.Conv(ngf, latent, self.grid, padding="VALID", rngs=rngs)
        self.expand = conv_transpose.ConvTranspose(
            latent, ngf, self.grid, padding="VALID", use_bias=False, rngs=rngs
        )
        self.expand_norm = _resnet.batch_norm(ngf, rngs)
        self.decoder = PyramidDecoder(ngf, channels, ngf, self.scale, rngs=rngs)

    def posterior(self, images: jax.Array):
        f = jax.nn.relu(self.reduce_norm(self.reduce(self.encoder(images))))
        mean, logvar = precision.float32((self.to_mean(f), self.to_logvar(f)))
        mean = mean.reshape(images.shape[0], -1)
        variance = jnp.exp(logvar.reshape(images.shape[0], -1))
        return mean, variance

    def decode(self, z: jax.Array) -> jax.Array:
        h = jax.nn.leaky_relu(self.expand_norm(self.expand(z[:, None, None, :])), 0.2)
        return self.decoder(h)

    def __call__(self, images: jax.Array, key: jax.Array, step: jax.Array):
        del step  # No schedule.
        mean, variance = self.posterior(images)
        z = mean + jnp.sqrt(variance) * jax.random.normal(key, mean.shape)
        return self.decode(z), mean, variance, None


def build(model_config: ml_collections.ConfigDict, rngs: nnx.Rngs):
    if model_config.kind not in KINDS:
        raise UserError(f"model.kind {model_config.kind!r} is not one of {KINDS}")
    return (PatchVAE if model_config.kind == "patchvae" else GlobalVAE)(model_config, rngs=rngs)


def _normalise(images: jax.Array) -> jax.Array:
    return (images - 0.5) / 0.5


def _per_example_terms(model, batch, key, step) -> dict[str, jax.Array]:
    images = _normalise(batch["image"])
    reconstruction, mean, variance, logits = model(images, key, step)
    error = jnp.square(reconstruction - images)
    if model.edge_weighted:
        error = error * edge_weights(images, model.scale)
    recon = error.reshape(error.shape[0], -1).sum(axis=-1)
    kl_app = distributions.gaussian_kl_standard_normal(mean, jnp.log(variance))
    terms = {"recon": recon, "kl_appearance": kl_app}
    loss = recon + model.beta_appearance * kl_app
    if logits is not None:
        kl_occ = distributions.bernoulli_kl(jax.nn.sigmoid(logits), model.occurrence_prior)
        terms["kl_occurrence"] = kl_occ
        loss = loss + model.beta_occurrence * kl_occ
    terms["loss"] = loss
    return terms


def train_loss(model, batch, key, step):
    terms = _per_example_terms(model, batch, key, step)
    terms = {name: value.mean() for name, value in terms.items()}
    if isinstance(model, PatchVAE):
        terms["temperature"] = model.temperature(step)
    return terms["loss"], terms


def eval_metrics(model, batch, key, step):
    return _per_example_terms(model, batch, key, step)


def log_importance_weights(model, batch, key, step, num_samples: int) -> jax.Array:
    """[B, K] log p(x, z_k) − log q(z_k | x) for the generative model the loss describes: a
    Gaussian likelihood of variance 1/2 on images in [-1, 1] (−log p(x | z) = Σ(x̂ − x)² +
    (D/2)·log π, the loss's squared error plus a constant), N(0, I) appearances, and for PatchVAE
    Bernoulli(prior) occurrences sampled as hard 0/1 from q (the distribution of the occurrence
    KL; training decodes relaxed samples). Densities are of the [-1, 1] images: add D·log 2 for
    [0, 1] pixels."""
    del step
    images = _normalise(batch["image"])
    batch_size = images.shape[0]
    tiled = jnp.broadcast_to(images, (num_samples, *images.shape))
    appearance_key, occurrence_key = jax.random.split(key)
    if isinstance(model, PatchVAE):
        mean, variance, logits = model.posterior(images)
    else:
        mean, variance = model.posterior(images)
    logvar = jnp.log(variance)
    shape = (num_samples, *mean.shape)
    appearance = mean + jnp.sqrt(variance) * jax.random.normal(appearance_key, shape, mean.dtype)
    flat = appearance.reshape(num_samples, batch_size, -1)
    log_ratio = distributions.gaussian_log_density(
        flat, mean.reshape(batch_size, -1), logvar.reshape(batch_size, -1)
    ) - distributions.gaussian_log_density(flat, 0.0, 0.0)  # [K, B]
    if isinstance(model, PatchVAE):
        probabilities = jax.nn.sigmoid(logits)
        occurrence = jax.random.bernoulli(
            occurrence_key, probabilities, (num_samples, *logits.shape)
        )
        occurrence = occurrence.astype(mean.dtype)
        log_q = occurrence * jax.nn.log_sigmoid(logits) + (1 - occurrence) * jax.nn.log_sigmoid(
            -logits
        )
        prior = model.occurrence_prior
        log_p = occurrence * jnp.log(prior) + (1 - occurrence) * jnp.log1p(-prior)
        log_ratio += (log_q - log_p).reshape(num_samples, batch_size, -1).sum(-1)
        decoded = model.decode(
            appearance.reshape(-1, *mean.shape[1:]), occurrence.reshape(-1, *logits.shape[1:])
        )
    else:
        decoded = model.decode(appearance.reshape(-1, mean.shape[-1]))
    error = jnp.square(decoded.reshape(tiled.shape) - tiled).reshape(num_samples, batch_size, -1)
    pixels = error.shape[-1]
    log_likelihood = -error.sum(-1) - 0.5 * pixels * jnp.log(jnp.pi).astype(error.dtype)
    return (log_likelihood - log_ratio).T


def predict(model, batch, step):
    """Deterministic codes and reconstructions (images in [0, 1]).

    PatchVAE: `appearance` [B, P, L] (posterior means), `occurrence` [B, h, w, P] (probabilities),
    `reconstruction` decoded from the means with each part present where its probability exceeds
    1/2. The VAE: `latent` [B, P·L] (posterior mean) and its `reconstruction`.
    """
    del step
    images = _normalise(batch["image"])
    if isinstance(model, PatchVAE):
        mean, _, logits = model.posterior(images)
        reconstruction = model.decode(mean, (logits > 0).astype(mean.dtype))
        codes = {"appearance": mean, "occurrence": jax.nn.sigmoid(logits)}
    else:
        mean, _ = model.posterior(images)
        reconstruction = model.decode(mean)
        codes = {"latent": mean}
    return {**codes, "reconstruction": (reconstruction + 1) / 2}


def image_summaries(model, batch, key, step):
    images = _normalise(batch["image"])
    rows = min(8, images.shape[0])
    reconstruction, *_ = model(images[:rows], key, step)
    pairs = jnp.stack([images[:rows], reconstruction], axis=1)
    grids = {"reconstructions": (pairs + 1) / 2}
    if isinstance(model, PatchVAE):
        grids.update(_part_summaries(model, batch["image"]))
    return grids


def draw_summaries(outputs):
    """The pictures as `image_summaries` made them, the reconstruction pairs under a row naming
    their columns."""
    grids = dict(outputs)
    grids["reconstructions"] = summaries.with_column_labels(
        outputs["reconstructions"], ["in", "out"]
    )
    return grids


def _part_summaries(model: PatchVAE, images: jax.Array) -> dict[str, jax.Array]:
    """Occurrence maps per part over the first images, and each part's highest-scoring patches."""
    _, _, logits = model.posterior(_normalise(images))
    probabilities = jax.nn.sigmoid(logits)  # [B, h, w, P]
    batch, h, w, parts = probabilities.shape
    rows = min(8, batch)
    maps = jnp.repeat(jnp.repeat(probabilities[:rows], model.scale, 1), model.scale, 2)
    gray = jnp.repeat(images[:rows], 3 // images.shape[-1], axis=-1)[:, None]  # [R, 1, H, W, 3]
    tint = jnp.stack([maps, jnp.zeros_like(maps), jnp.zeros_like(maps)], -1)  # Red = occurrence.
    overlays = 0.5 * gray + 0.5 * tint.transpose(0, 3, 1, 2, 4)  # [R, P, H, W, 3]
    occurrence = jnp.concatenate([gray, overlays], axis=1)

    # Each part's top patches: the image cells (scale×scale, with context) where it is most likely.
    patch = 2 * model.scale
    flat = probabilities.transpose(3, 0, 1, 2).reshape(parts, -1)  # [P, B·h·w]
    shown = min(8, flat.shape[1])
    _, best = jax.lax.top_k(flat, shown)
    index, cy, cx = best // (h * w), (best % (h * w)) // w, best % w
    padded = jnp.pad(images, ((0, 0), (model.scale // 2,) * 2, (model.scale // 2,) * 2, (0, 0)))

    def crop(i, y, x):
        return jax.lax.dynamic_slice(
            padded[i], (y * model.scale, x * model.scale, 0), (patch, patch, images.shape[-1])
        )

    patches = jax.vmap(jax.vmap(crop))(index, cy, cx)  # [P, shown, patch, patch, C]
    return {"part_occurrence": occurrence, "part_patches": patches}
