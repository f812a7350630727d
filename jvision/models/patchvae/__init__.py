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

The two models are `networks.PatchVAE` and `networks.GlobalVAE`, with the same methods; `build`
picks one by `model.kind`, and nothing else here asks which it is.
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jvision import summaries
from jvision.errors import UserError
from jvision.models.patchvae import networks

KINDS = {"patchvae": networks.PatchVAE, "vae": networks.GlobalVAE}
# Each KL term's weight in the loss: the config key of its β.
KL_WEIGHTS = {"kl_appearance": "beta_appearance", "kl_occurrence": "beta_occurrence"}


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


def build(config: ml_collections.ConfigDict, rngs: nnx.Rngs):
    if config.kind not in KINDS:
        raise UserError(f"model.kind {config.kind!r} is not one of {tuple(KINDS)}")
    return KINDS[config.kind](
        tuple(config.image_shape),
        config.scale,
        config.num_parts,
        config.part_size,
        config.ngf,
        rngs=rngs,
    )


def _occurrence_prior(config) -> float:
    return config.occurrence_prior or 1.0 / config.num_parts


def _temperature(config, step) -> jax.Array:
    """The relaxed Bernoulli's temperature after `step` train steps."""
    schedule = (config.initial_temperature, config.anneal, config.min_temperature)
    return networks.temperature(step, *schedule)


def _sampling(config, step) -> networks.Sampling:
    return networks.Sampling(
        _temperature(config, step), bool(config.hard), _occurrence_prior(config)
    )


def _normalise(images: jax.Array) -> jax.Array:
    return (images - 0.5) / 0.5


def _per_example_terms(config, model, batch, key, step) -> dict[str, jax.Array]:
    images = _normalise(batch["image"])
    reconstruction, kls = model(images, key, _sampling(config, step))
    error = jnp.square(reconstruction - images)
    if config.edge_weighted:
        error = error * edge_weights(images, model.scale)
    recon = error.reshape(error.shape[0], -1).sum(axis=-1)
    loss = recon
    for name, kl in kls.items():
        loss = loss + float(config[KL_WEIGHTS[name]]) * kl
    return {"recon": recon, **kls, "loss": loss}


def train_loss(config, model, batch, key, step):
    terms = _per_example_terms(config, model, batch, key, step)
    terms = {name: value.mean() for name, value in terms.items()}
    loss = terms.pop("loss")
    if config.kind == "patchvae":
        terms["temperature"] = _temperature(config, step)
    return loss, terms


def eval_metrics(config, model, batch, key, step):
    return _per_example_terms(config, model, batch, key, step)


def log_importance_weights(config, model, batch, key, step, num_samples: int) -> jax.Array:
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
    decoded, log_ratio = model.importance_samples(
        images, key, num_samples, _occurrence_prior(config)
    )
    error = jnp.square(decoded.reshape(tiled.shape) - tiled).reshape(num_samples, batch_size, -1)
    pixels = error.shape[-1]
    log_likelihood = -error.sum(-1) - 0.5 * pixels * jnp.log(jnp.pi).astype(error.dtype)
    return (log_likelihood - log_ratio).T


def predict(config, model, batch, step):
    """Deterministic codes and reconstructions (images in [0, 1]).

    PatchVAE: `appearance` [B, P, L] (posterior means), `occurrence` [B, h, w, P] (probabilities),
    `reconstruction` decoded from the means with each part present where its probability exceeds
    1/2. The VAE: `latent` [B, P·L] (posterior mean) and its `reconstruction`.
    """
    del config, step
    codes, reconstruction = model.codes(_normalise(batch["image"]))
    return {**codes, "reconstruction": (reconstruction + 1) / 2}


def image_summaries(config, model, batch, key, step):
    """Test inputs beside sampled reconstructions; PatchVAE's parts (`networks.PatchVAE.
    pictures`)."""
    images = _normalise(batch["image"])
    rows = min(8, images.shape[0])
    reconstruction, _ = model(images[:rows], key, _sampling(config, step))
    pairs = jnp.stack([images[:rows], reconstruction], axis=1)
    return {"reconstructions": (pairs + 1) / 2, **model.pictures(batch["image"])}


def draw_summaries(config, outputs):
    """The pictures as `image_summaries` made them, the reconstruction pairs under a row naming
    their columns."""
    del config
    grids = dict(outputs)
    grids["reconstructions"] = summaries.with_column_labels(
        outputs["reconstructions"], ["in", "out"]
    )
    return grids
