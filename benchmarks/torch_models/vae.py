"""Twin of jvision/models/vae.py: the convolutional VAE with a Bernoulli likelihood.

Same layers and names: encoder blocks (3×3 'SAME' conv, BatchNorm, ReLU), a dense posterior, a
dense expansion and a decoder of sub-pixel convolutions (conv to C·s² channels, pixel shuffle).
Layout differences are absorbed by the weight converter, not at run time: torch flattens
features as (C, H, W) where jvision flattens (H, W, C), and nn.PixelShuffle reads channel
c·s² + i·s + j where jvision's depth_to_space reads (i·s + j)·C + c.
"""

import math

import numpy as np
import torch
from torch import nn

from . import _common


class UpConv(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = _common.SameConv2d(cin, cout * stride * stride, 3)
        self.shuffle = nn.PixelShuffle(stride)

    def forward(self, x):
        return self.shuffle(self.conv(x))


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, up: bool):
        super().__init__()
        self.conv = UpConv(cin, cout, stride) if up else _common.SameConv2d(cin, cout, 3, stride)
        self.norm = _common.batch_norm(cout)  # nnx.BatchNorm defaults: momentum 0.99, eps 1e-5.

    def forward(self, x):
        return torch.relu(self.norm(self.conv(x)))


class VAE(nn.Module):
    def __init__(self, image_shape, latent_dim: int, widths, strides):
        super().__init__()
        height, width, channels = image_shape
        total_stride = math.prod(strides)
        self.latent_dim = latent_dim
        self.feature_shape = (height // total_stride, width // total_stride, widths[-1])  # HWC
        features = math.prod(self.feature_shape)
        cins = (channels, *widths[:-1])
        self.encoder = nn.ModuleList(
            [ConvBlock(ci, co, s, False) for ci, co, s in zip(cins, widths, strides, strict=True)]
        )
        self.posterior = nn.Linear(features, 2 * latent_dim)
        self.expand = nn.Linear(latent_dim, features)
        self.decoder = nn.ModuleList(
            [
                ConvBlock(ci, co, s, True)
                for ci, co, s in zip(widths[:0:-1], cins[:0:-1], strides[:0:-1], strict=True)
            ]
        )
        self.to_logits = UpConv(widths[0], channels, strides[0])

    def encode(self, images):
        h = images
        for block in self.encoder:
            h = block(h)
        mean, logvar = self.posterior(h.flatten(1)).chunk(2, -1)
        return mean, logvar

    def decode(self, z):
        h, w, c = self.feature_shape
        h = torch.relu(self.expand(z)).view(z.shape[0], c, h, w)
        for block in self.decoder:
            h = block(h)
        return self.to_logits(h)

    def sample_noise(self, batch_size: int, generator=None):
        device = self.posterior.weight.device
        return {"eps": torch.randn(batch_size, self.latent_dim, generator=generator, device=device)}

    def loss(self, batch, noise=None, step=0):
        images = batch["image"]
        noise = noise or self.sample_noise(images.shape[0])
        mean, logvar = self.encode(images)
        z = mean + torch.exp(0.5 * logvar) * noise["eps"]
        logits = self.decode(z)
        recon = _common.bernoulli_nll(logits, images)
        kl = _common.gaussian_kl_standard_normal(mean, logvar)
        terms = {
            "nelbo_nats": (recon + kl).mean(),
            "recon_nats": recon.mean(),
            "kl_nats": kl.mean(),
        }
        return terms["nelbo_nats"], terms

    def jvision_layout(self, tree):
        """Permutes jvision's variables into torch's feature and channel orders."""
        features = _common.flat_permutation(self.feature_shape, (2, 0, 1))
        tree = _common.replace(tree, "posterior", lambda n: _common.permute(n, rows=features))
        tree = _common.replace(tree, "expand", lambda n: _common.permute(n, columns=features))
        upconvs = {f"decoder.{i}.conv": b.conv for i, b in enumerate(self.decoder)}
        for path, upconv in {**upconvs, "to_logits": self.to_logits}.items():
            blocks = upconv.stride**2
            shuffle = _common.flat_permutation((blocks, upconv.conv.out_channels // blocks), (1, 0))
            tree = _common.replace(
                tree, f"{path}.conv", lambda n, s=shuffle: _common.permute(n, columns=s)
            )
        return tree


def build(config) -> VAE:
    m = config.model
    return VAE(tuple(m.image_shape), m.latent_dim, tuple(m.widths), tuple(m.strides))


def jax_noise(config, key, batch_size: int):
    """The ε [B, latent] that jvision's vae.train_loss draws from `key`
    (`distributions.reparameterized_sample(key, mean, logvar)`)."""
    import jax

    eps = jax.random.normal(key, (batch_size, config.model.latent_dim))
    return {"eps": torch.from_numpy(np.array(eps))}
