"""Twin of jvision/models/draw.py and jvision/ops/attention.py: DRAW with Gaussian attention.

Encoder and decoder are LSTM cells whose four gates (i, f, g, o) come from one dense layer on
[input, h], as jvision's (not nn.LSTMCell, whose gate order and split weights differ). The glimpse
loop is a Python loop. Images are [B, C, H, W]; a read glimpse is [B, 2C, N, N] and flattens in
(channel, row, column) order where jvision's [B, N, N, 2C] flattens (row, column, channel): the
weight converter permutes the encoder's input rows and the write head's outputs accordingly.
Built in float32 whatever `model.dtype` says: `benchmarks/compare.py --dtype=bfloat16` runs it under
torch.autocast, as every twin.
"""

import numpy as np
import torch
from torch import nn

from . import _common

NUM_RAW_PARAMS = 5  # (g̃x, g̃y, log σ², log δ̃, log γ).


class LSTM(nn.Module):
    def __init__(self, in_features: int, hidden_size: int):
        super().__init__()
        self.gates = nn.Linear(in_features + hidden_size, 4 * hidden_size)

    def forward(self, state, inputs):
        hidden, cell = state
        i, f, g, o = self.gates(torch.cat([inputs, hidden], -1)).chunk(4, -1)
        cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(cell), cell


def filterbank(center, stride, variance, grid_size: int, size: int):
    """[B] window parameters -> [B, N, size] row-normalised Gaussian filters (1-based pixels)."""
    offsets = torch.arange(1, grid_size + 1, dtype=center.dtype, device=center.device)
    offsets = offsets - grid_size / 2 - 0.5
    means = center[:, None] + offsets[None, :] * stride[:, None]
    pixels = torch.arange(1, size + 1, dtype=center.dtype, device=center.device)
    filters = torch.exp(
        -(pixels[None, None, :] - means[:, :, None]).square() / (2 * variance[:, None, None])
    )
    return filters / filters.sum(-1, keepdim=True).clamp_min(1e-8)


class DRAW(nn.Module):
    def __init__(
        self, image_shape, num_glimpses, hidden_size, latent_size, read_size, write_size, attend
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        height, width, channels = self.image_shape
        self.num_glimpses, self.hidden_size, self.latent_size = (
            num_glimpses,
            hidden_size,
            latent_size,
        )
        self.read_size, self.write_size, self.use_attention = read_size, write_size, attend
        if attend:
            read_features = 2 * read_size * read_size * channels
            write_features = write_size * write_size * channels
            self.read_window = nn.Linear(hidden_size, NUM_RAW_PARAMS)
            self.write_window = nn.Linear(hidden_size, NUM_RAW_PARAMS)
        else:
            read_features = 2 * height * width * channels
            write_features = height * width * channels
        self.encoder = LSTM(read_features + hidden_size, hidden_size)
        self.posterior = nn.Linear(hidden_size, 2 * latent_size)
        self.decoder = LSTM(latent_size, hidden_size)
        self.write_content = nn.Linear(hidden_size, write_features)

    def _filters(self, head, h_dec, grid_size: int):
        """F_Y [B, N, H], F_X [B, N, W] and γ [B] of a window (eqs. 19-26)."""
        height, width, _ = self.image_shape
        g_x, g_y, log_variance, log_stride, log_intensity = head(h_dec).unbind(-1)
        stride = (max(height, width) - 1) / max(grid_size - 1, 1) * torch.exp(log_stride)
        variance = torch.exp(log_variance)
        f_y = filterbank((height + 1) / 2 * (g_y + 1), stride, variance, grid_size, height)
        f_x = filterbank((width + 1) / 2 * (g_x + 1), stride, variance, grid_size, width)
        return f_y, f_x, torch.exp(log_intensity)

    def read(self, images, errors, h_dec):
        both = torch.cat([images, errors], 1)  # [B, 2C, H, W]
        if not self.use_attention:
            return both.flatten(1)
        f_y, f_x, intensity = self._filters(self.read_window, h_dec, self.read_size)
        glimpse = f_y[:, None] @ both @ f_x[:, None].transpose(-1, -2)  # [B, 2C, N, N]
        return intensity[:, None] * glimpse.flatten(1)

    def write(self, h_dec):
        height, width, channels = self.image_shape
        content = self.write_content(h_dec)
        if not self.use_attention:
            return content.view(-1, channels, height, width)
        f_y, f_x, intensity = self._filters(self.write_window, h_dec, self.write_size)
        patch = content.view(-1, channels, self.write_size, self.write_size)
        patch = patch / intensity[:, None, None, None]
        return f_y[:, None].transpose(-1, -2) @ patch @ f_x[:, None]  # [B, C, H, W]

    def forward(self, images, noise):
        """images [B, C, H, W], noise [T, B, Z] -> final canvas logits, KL per step [T, B]."""
        batch = images.shape[0]
        zeros = images.new_zeros(batch, self.hidden_size)
        canvas = torch.zeros_like(images)
        encoder_state, decoder_state = (zeros, zeros), (zeros, zeros)
        kls = []
        for noise_t in noise:
            errors = images - torch.sigmoid(canvas)
            read = self.read(images, errors, decoder_state[0])
            encoder_state = self.encoder(encoder_state, torch.cat([read, decoder_state[0]], -1))
            mean, logvar = self.posterior(encoder_state[0]).chunk(2, -1)
            z = mean + torch.exp(0.5 * logvar) * noise_t
            decoder_state = self.decoder(decoder_state, z)
            canvas = canvas + self.write(decoder_state[0])
            kls.append(_common.gaussian_kl_standard_normal(mean, logvar))
        return canvas, torch.stack(kls)

    def sample_noise(self, batch_size: int, generator=None):
        shape = (self.num_glimpses, batch_size, self.latent_size)
        device = self.posterior.weight.device
        return {"eps": torch.randn(shape, generator=generator, device=device)}

    def loss(self, batch, noise=None, step=0):
        images = batch["image"]
        noise = noise or self.sample_noise(images.shape[0])
        canvas, kls = self(images, noise["eps"])
        recon = _common.bernoulli_nll(canvas, images)
        kl = kls.sum(0)
        terms = {
            "nelbo_nats": (recon + kl).mean(),
            "recon_nats": recon.mean(),
            "kl_nats": kl.mean(),
        }
        return terms["nelbo_nats"], terms

    def jvision_layout(self, tree):
        """Read features and write content in torch's (C, N, N) order instead of (N, N, C)."""
        height, width, channels = self.image_shape
        if self.use_attention:
            read_shape = (self.read_size, self.read_size, 2 * channels)
            write_shape = (self.write_size, self.write_size, channels)
        else:
            read_shape, write_shape = (height, width, 2 * channels), (height, width, channels)
        read = _common.flat_permutation(read_shape, (2, 0, 1))
        rows = np.concatenate([read, np.arange(len(read), self.encoder.gates.in_features)])
        tree = _common.replace(tree, "encoder.gates", lambda n: _common.permute(n, rows=rows))
        write = _common.flat_permutation(write_shape, (2, 0, 1))
        return _common.replace(tree, "write_content", lambda n: _common.permute(n, columns=write))


def build(config) -> DRAW:
    m = config.model  # model.dtype is the caller's: float32 weights, torch.autocast for bf16.
    return DRAW(
        m.image_shape,
        m.num_glimpses,
        m.hidden_size,
        m.latent_size,
        m.read_size,
        m.write_size,
        m.use_attention,
    )


def jax_noise(config, key, batch_size: int):
    """The ε [T, B, Z] of jvision's draw.train_loss (`DRAW.noise(key, batch)`)."""
    import jax

    m = config.model
    eps = jax.random.normal(key, (m.num_glimpses, batch_size, m.latent_size))
    return {"eps": torch.from_numpy(np.array(eps))}
