"""Twin of jvision/models/patchvae.py: PatchVAE and its matched global-VAE baseline (kind 'vae').

Parts live on the channel axis: appearance maps [B, P·L, h, w] view as [B, P, L, h, w] and
occurrence logits are [B, P, h, w], so the decoder input [B, P·L, h, w] has jvision's channel
order p·L + l and no weight needs permuting. Transposed convolutions are nn.ConvTranspose2d; the
converter flips Flax's unflipped ConvTranspose kernels, and jvision's 'SAME' 4×4 stride-2 ones are
torch's padding=1. The occurrence noise is the uniform u of the relaxed Bernoulli ([B, P, h, w]);
the logistic noise log u - log(1 - u) is computed from it inside the loss, as jvision does.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import _common, _resnet

KINDS = ("patchvae", "vae")


def temperature(step: int, initial: float, anneal: float, minimum: float) -> float:
    """jvision.models.patchvae.networks.temperature (the authors' compounding schedule)."""
    updates = step // 1000
    exponent = (updates + 1) + 1000 * updates * (updates + 1) / 2
    return max(initial * math.exp(-anneal * exponent), minimum)


def edge_weights(images, scale: int):
    """|Laplacian| (replicate-padded) summed over scale×scale cells, mean 1 per image/channel."""
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    laplacian = (
        padded[:, :, :-2, 1:-1]
        + padded[:, :, 2:, 1:-1]
        + padded[:, :, 1:-1, :-2]
        + padded[:, :, 1:-1, 2:]
        - 4 * images
    )
    b, c, h, w = images.shape
    cells = laplacian.abs().view(b, c, h // scale, scale, w // scale, scale).sum((3, 5))
    mask = cells.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    return (mask / mask.mean((2, 3), keepdim=True).clamp_min(1e-12)).detach()


class PyramidDecoder(nn.Module):
    def __init__(self, latent_channels: int, out_channels: int, ngf: int, scale: int):
        super().__init__()
        doublings = int(math.log2(scale))
        widths = [ngf * 2**i for i in range(doublings - 1, -1, -1)]
        self.project = nn.ConvTranspose2d(latent_channels, widths[0], 1, bias=False)
        self.project_norm = _resnet.batch_norm(widths[0])
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(cin, cout, 4, 2, padding=1, bias=False)
            for cin, cout in zip(widths[:-1], widths[1:], strict=True)
        )
        self.norms = nn.ModuleList(_resnet.batch_norm(c) for c in widths[1:])
        self.to_image = nn.ConvTranspose2d(widths[-1], out_channels, 4, 2, padding=1, bias=False)

    def forward(self, z):
        x = F.leaky_relu(self.project_norm(self.project(z)), 0.2)
        for up, norm in zip(self.ups, self.norms, strict=True):
            x = F.leaky_relu(norm(up(x)), 0.2)
        return torch.tanh(self.to_image(x))


def _head(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class _Losses(nn.Module):
    """The loss both kinds share: Σ(x̂ - x)² (optionally edge-weighted) + β_app·KL_app
    (+ β_occ·KL_occ for PatchVAE), batch mean; images normalised to [-1, 1]."""

    def _settings(self, m):
        self.beta_appearance = float(m.beta_appearance)
        self.beta_occurrence = float(m.beta_occurrence)
        self.edge_weighted = bool(m.edge_weighted)
        self.scale = m.scale
        self.num_parts, self.part_size = m.num_parts, m.part_size
        height, width, _ = m.image_shape
        self.grid = (height // m.scale, width // m.scale)

    def loss(self, batch, noise=None, step=0):
        images = (batch["image"] - 0.5) / 0.5
        noise = noise or self.sample_noise(images.shape[0])
        reconstruction, mean, variance, logits = self(images, noise, step)
        error = (reconstruction - images).square()
        if self.edge_weighted:
            error = error * edge_weights(images, self.scale)
        recon = _common.sum_per_example(error)
        kl_app = _common.gaussian_kl_standard_normal(mean, torch.log(variance))
        terms = {"recon": recon, "kl_appearance": kl_app}
        loss = recon + self.beta_appearance * kl_app
        if logits is not None:
            probs = torch.sigmoid(logits)
            prior = self.occurrence_prior
            kl_occ = _common.sum_per_example(
                probs * torch.log((probs + 1e-7) / prior)
                + (1 - probs) * torch.log((1 - probs + 1e-7) / (1 - prior))
            )
            terms["kl_occurrence"] = kl_occ
            loss = loss + self.beta_occurrence * kl_occ
        terms = {name: value.mean() for name, value in terms.items()}
        loss = loss.mean()
        if logits is not None:  # As jvision reports it.
            tau = temperature(int(step), *self.schedule)
            terms["temperature"] = torch.tensor(tau, dtype=loss.dtype)
        return loss, terms


class PatchVAE(_Losses):
    def __init__(self, model_config):
        super().__init__()
        m = model_config
        self._settings(m)
        channels = m.image_shape[2]
        self.hard = bool(m.hard)
        self.occurrence_prior = m.occurrence_prior or 1.0 / self.num_parts
        self.schedule = (m.initial_temperature, m.anneal, m.min_temperature)
        latent = self.num_parts * self.part_size
        self.encoder = _resnet.ResNetTrunk(channels, self.scale)
        features = self.encoder.out_channels
        self.appearance_mean = _head(features, latent)
        self.appearance_logvar = _head(features, latent)
        self.occurrence_logits = _head(features, self.num_parts)
        self.decoder = PyramidDecoder(latent, channels, m.ngf, self.scale)

    def posterior(self, images):
        """Pooled appearance mean and variance [B, P, L], occurrence logits [B, P, h, w]."""
        f = self.encoder(images)
        b, _, h, w = f.shape
        parts = (b, self.num_parts, self.part_size, h, w)
        mean = self.appearance_mean(f).view(parts)
        variance = torch.exp(self.appearance_logvar(f)).clamp(1e-7, 1e7).view(parts)
        logits = self.occurrence_logits(f)
        weights = torch.sigmoid(logits).detach()[:, :, None]  # [B, P, 1, h, w]
        total = weights.sum((3, 4)) + 1e-7
        pooled_mean = (weights * mean).sum((3, 4)) / total
        pooled_variance = ((weights * variance).sum((3, 4)) + 1e-7) / total
        return pooled_mean, pooled_variance, logits

    def decode(self, appearance, occurrence):
        z = occurrence[:, :, None] * appearance[..., None, None]  # [B, P, L, h, w]
        return self.decoder(z.flatten(1, 2))

    def forward(self, images, noise, step=0):
        mean, variance, logits = self.posterior(images)
        appearance = mean + torch.sqrt(variance) * noise["appearance"]
        eps = torch.finfo(logits.dtype).eps
        probs = torch.sigmoid(logits).clamp(eps, 1 - eps)
        uniform = noise["uniform"].clamp(eps, 1 - eps)
        logistic = torch.log(uniform) - torch.log1p(-uniform)
        tau = temperature(int(step), *self.schedule)
        occurrence = torch.sigmoid((logistic + torch.log(probs) - torch.log1p(-probs)) / tau)
        if self.hard:  # Straight-through.
            occurrence = occurrence + ((logits > 0).to(occurrence) - occurrence).detach()
        return self.decode(appearance, occurrence), mean, variance, logits

    def sample_noise(self, batch_size: int, generator=None):
        options = {"generator": generator, "device": self.appearance_mean.weight.device}
        return {
            "appearance": torch.randn(batch_size, self.num_parts, self.part_size, **options),
            "uniform": torch.rand(batch_size, self.num_parts, *self.grid, **options),
        }


class GlobalVAE(_Losses):
    def __init__(self, model_config):
        super().__init__()
        m = model_config
        self._settings(m)
        channels = m.image_shape[2]
        latent, ngf = self.num_parts * self.part_size, m.ngf
        self.encoder = _resnet.ResNetTrunk(channels, self.scale)
        self.reduce = nn.Conv2d(self.encoder.out_channels, ngf, 1, bias=False)
        self.reduce_norm = _resnet.batch_norm(ngf)
        self.to_mean = nn.Conv2d(ngf, latent, self.grid)
        self.to_logvar = nn.Conv2d(ngf, latent, self.grid)
        self.expand = nn.ConvTranspose2d(latent, ngf, self.grid, bias=False)
        self.expand_norm = _resnet.batch_norm(ngf)
        self.decoder = PyramidDecoder(ngf, channels, ngf, self.scale)

    def posterior(self, images):
        f = torch.relu(self.reduce_norm(self.reduce(self.encoder(images))))
        return self.to_mean(f).flatten(1), torch.exp(self.to_logvar(f).flatten(1))

    def decode(self, z):
        h = F.leaky_relu(self.expand_norm(self.expand(z[:, :, None, None])), 0.2)
        return self.decoder(h)

    def forward(self, images, noise, step=0):
        mean, variance = self.posterior(images)
        z = mean + torch.sqrt(variance) * noise["eps"]
        return self.decode(z), mean, variance, None

    def sample_noise(self, batch_size: int, generator=None):
        shape = (batch_size, self.num_parts * self.part_size)
        return {"eps": torch.randn(shape, generator=generator, device=self.to_mean.weight.device)}


def build(config):
    kind = config.model.kind
    if kind not in KINDS:
        raise ValueError(f"model.kind {kind!r} is not one of {KINDS}")
    return (PatchVAE if kind == "patchvae" else GlobalVAE)(config.model)


def jax_noise(config, key, batch_size: int):
    """The noise jvision's patchvae.train_loss draws from `key`: PatchVAE splits it into an
    appearance key (ε [B, P, L]) and an occurrence key (u [B, h, w, P], given here as
    [B, P, h, w]); the baseline draws ε [B, P·L] from `key` itself."""
    import jax

    m = config.model
    if m.kind == "vae":
        eps = jax.random.normal(key, (batch_size, m.num_parts * m.part_size))
        return {"eps": torch.from_numpy(np.array(eps))}
    height, width, _ = m.image_shape
    appearance_key, occurrence_key = jax.random.split(key)
    appearance = jax.random.normal(appearance_key, (batch_size, m.num_parts, m.part_size))
    shape = (batch_size, height // m.scale, width // m.scale, m.num_parts)
    uniform = jax.random.uniform(occurrence_key, shape)  # jvision's dtype: float32 (or 64).
    return {
        "appearance": torch.from_numpy(np.array(appearance)),
        "uniform": torch.from_numpy(np.array(uniform).transpose(0, 3, 1, 2).copy()),
    }
