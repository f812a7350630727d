"""Twin of jvision/models/encoding_detector.py's training loss: the siamese cross-correlation
detector with its exemplar VAE (pytlib's encoding detector, after SiamFC).

Same layers and names: `encoder` (valid 3×3 convs, a norm after each, ReLU between), the
bias-free linears `to_mean`, `to_logvar`, `expand`, and `decoder` (transposed convs, a norm after
each, ReLU between). The norm is `model.norm` (absent: "batch"): pytlib's BatchNorm (Flax momentum
0.9 = torch's 0.1, eps 1e-5) or GroupNorm (min(4, channels) groups of consecutive channels, eps
1e-5, as `nnx.GroupNorm`). Conventions absorbed by the weight converter, not at run time:

- torch flattens the exemplar map as (C, h, w), jvision as (h, w, C): `to_mean`/`to_logvar` rows
  and `expand` columns are permuted.
- The decoder: jvision's `nnx.ConvTranspose(padding=((2, 2 + extra),) * 2)` is torch's
  `ConvTranspose2d(padding=0, output_padding=extra)` (k - 1 - 2 = 0 pixels cropped; the extra
  row/column at the end, which only the bias reaches in both), with the kernel flipped (Flax slides
  it unflipped over the dilated input; `_common` flips it).
- The response "adjust" (`gain · correlation + bias`, two scalar parameters in jvision) is SiamFC's
  1×1 conv `adjust` here (`response_gain` -> its [1, 1, 1, 1] kernel, `response_bias` -> its bias).
  It exists whatever `model.response_adjust` says (jvision declares both scalars either way) and is
  applied only when it is True.
- The exemplar bank (`bank`, `bank_counts`: jvision's `Calibrated` variables, state computed from
  data after training and read only by `predict`) is carried as buffers of the same names, the
  bank as [classes, C, h, w] (jvision's [classes, h, w, C]): the kernel of `heat_logits`, which
  computes what jvision's `predict` decodes its detections from. The training loss ignores them.

Batches keep jvision's NHWC crops (`search_positive`, `search_negative` [B, S, S, C], `exemplar`
[B, E, E, C]: `_common.to_torch_batch` transposes only `image`); the loss views them as NCHW
(a permute, no copy). The correlation of each example's exemplar map over its own search map is
SiamFC's PyTorch grouped convolution, `F.conv2d(search.view(1, B·C, H, W), exemplar, groups=B)`,
for both of jvision's `model.correlation` methods ("direct" is that convolution, "fft" the same sums
through FFTs). The encoder runs three times per step, exemplar, positive then negative search:
with BatchNorm each is a separate batch (its own statistics) and running-statistics update, as in
jvision. The VAE's ε enters as `noise["eps"]` [B, latent].
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jvision.ops.correlation import stack_geometry  # Geometry, as the SSD twin's priors.

from . import _common


def feature_sizes(size: int, strides) -> list[int]:
    """The side after each valid 3×3 conv, input first (jvision's `_sizes`)."""
    sizes = [size]
    for stride in strides:
        sizes.append((sizes[-1] - 3) // stride + 1)
    return sizes


GROUPS = 4  # jvision's encoding_detector.GROUPS.


class GroupNorm2d(nn.BatchNorm2d):
    """`nnx.GroupNorm(channels, num_groups, epsilon)`: F.group_norm, i.e. nn.GroupNorm's
    computation. It subclasses nn.BatchNorm2d (affine, no running statistics) only so that
    `_common`'s weight converter, which maps a BatchNorm's `scale`/`bias` to `weight`/`bias` and
    knows no nn.GroupNorm, loads it."""

    def __init__(self, groups: int, channels: int, eps: float = 1e-5):
        super().__init__(channels, eps=eps, track_running_stats=False)
        self.groups = groups

    def forward(self, x):
        return F.group_norm(x, self.groups, self.weight, self.bias, self.eps)


def norm_layer(kind: str, channels: int) -> nn.Module:
    """jvision's `norm_layer`: BatchNorm (Flax momentum 0.9, eps 1e-5) or GroupNorm."""
    if kind == "batch":
        return _common.batch_norm(channels, flax_momentum=0.9)
    if kind == "group":
        return GroupNorm2d(min(GROUPS, channels), channels)
    raise ValueError(f"model.norm {kind!r} is not one of ('batch', 'group')")


class Encoder(nn.Module):
    def __init__(self, channels: int, widths, strides, norm: str):
        super().__init__()
        cins = (channels, *widths[:-1])
        self.convs = nn.ModuleList(
            nn.Conv2d(ci, co, 3, s) for ci, co, s in zip(cins, widths, strides, strict=True)
        )
        self.norms = nn.ModuleList(norm_layer(norm, co) for co in widths)

    def forward(self, x):
        for index, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = norm(conv(x))
            if index < len(self.convs) - 1:
                x = torch.relu(x)
        return x


class Decoder(nn.Module):
    def __init__(self, channels: int, widths, strides, image_size: int, norm: str):
        super().__init__()
        sizes = feature_sizes(image_size, strides)
        couts = (channels, *widths[:-1])
        layers = []
        for index in reversed(range(len(strides))):
            produced = (sizes[index + 1] - 1) * strides[index] + 3
            extra = sizes[index] - produced  # 0 or 1: torch's output_padding.
            layers.append(
                nn.ConvTranspose2d(
                    widths[index], couts[index], 3, strides[index], output_padding=extra
                )
            )
        self.layers = nn.ModuleList(layers)
        normed = layers if norm == "batch" else layers[:-1]  # As jvision: no GroupNorm last.
        self.norms = nn.ModuleList(norm_layer(norm, layer.out_channels) for layer in normed)

    def forward(self, x):
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.norms):
                x = self.norms[index](x)
            if index < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def correlate(search, exemplar):
    """Each example's exemplar map over its own search map, SiamFC's grouped conv:
    search [B, C, H, W], exemplar [B, C, h, w] -> sums [B, H-h+1, W-w+1]."""
    batch, channels, height, width = search.shape
    out = F.conv2d(search.reshape(1, batch * channels, height, width), exemplar, groups=batch)
    return out[0]


def nchw(x):
    return x.permute(0, 3, 1, 2)


class EncodingDetector(nn.Module):
    def __init__(self, model_config):
        super().__init__()
        m = model_config
        widths, strides = tuple(m.widths), tuple(m.strides)
        self.latent_size = m.latent_size
        cells = feature_sizes(m.exemplar_size, strides)[-1]
        self.map_shape = (cells, cells, widths[-1])  # jvision's (h, w, C).
        features = cells * cells * widths[-1]
        norm = m.get("norm", "batch")
        self.encoder = Encoder(m.channels, widths, strides, norm)
        self.to_mean = nn.Linear(features, m.latent_size, bias=False)
        self.to_logvar = nn.Linear(features, m.latent_size, bias=False)
        self.expand = nn.Linear(m.latent_size, features, bias=False)
        self.decoder = Decoder(m.channels, widths, strides, m.exemplar_size, norm)
        self.response_adjust = bool(m.response_adjust)
        self.adjust = nn.Conv2d(1, 1, 1)  # SiamFC's adjust layer: gain · sums + bias.
        with torch.no_grad():
            self.adjust.weight.fill_(1.0 / features)
            self.adjust.bias.zero_()
        self.register_buffer("bank", torch.zeros(m.num_classes, widths[-1], cells, cells))
        self.register_buffer("bank_counts", torch.zeros(m.num_classes))
        jump, field = stack_geometry(strides)
        self.padding = (jump * (cells - 1) + field - 1) // 2  # jvision's `padding()`.

    def adjusted(self, sums: torch.Tensor) -> torch.Tensor:
        """Response logits from correlation sums [N, H, W]: adjusted, or the raw sums when
        `response_adjust` is off."""
        if not self.response_adjust:
            return sums
        return self.adjust(sums[:, None])[:, 0]

    def responses(self, search, exemplar_map):
        return self.adjusted(correlate(self.encoder(search), exemplar_map))

    def heat_logits(self, images: torch.Tensor) -> torch.Tensor:
        """jvision's `heat_logits`: scenes [B, C, H, W] padded by half an exemplar window, encoded
        once, the bank slid over them -> per-class response logits [B, classes, R, R']."""
        padded = F.pad(images, (self.padding,) * 4)
        sums = F.conv2d(self.encoder(padded), self.bank)
        return self.adjusted(sums.flatten(0, 1)).view_as(sums)

    def vae(self, exemplar_map, eps):
        flat = torch.relu(exemplar_map).flatten(1)
        mean, logvar = self.to_mean(flat), self.to_logvar(flat)
        z = mean + torch.exp(0.5 * logvar) * eps
        h, w, c = self.map_shape
        hidden = torch.relu(self.expand(z)).view(-1, c, h, w)
        return self.decoder(hidden), mean, logvar

    def sample_noise(self, batch_size: int, generator=None):
        device = self.expand.weight.device
        eps = torch.randn(batch_size, self.latent_size, generator=generator, device=device)
        return {"eps": eps}

    def loss(self, batch, noise=None, step=0):
        del step
        exemplar = nchw(batch["exemplar"])
        noise = noise or self.sample_noise(exemplar.shape[0])
        exemplar_map = self.encoder(exemplar)
        positive = self.responses(nchw(batch["search_positive"]), exemplar_map)
        negative = self.responses(nchw(batch["search_negative"]), exemplar_map)
        bce_positive = F.binary_cross_entropy_with_logits(positive, batch["target_positive"])
        bce_negative = F.binary_cross_entropy_with_logits(negative, torch.zeros_like(negative))
        logits, mean, logvar = self.vae(exemplar_map, noise["eps"])
        recon = F.binary_cross_entropy_with_logits(logits, exemplar)
        kl = _common.gaussian_kl_standard_normal(mean, logvar).sum() / exemplar.numel()
        loss = bce_positive + bce_negative + recon + kl
        return loss, {
            "bce_positive": bce_positive,
            "bce_negative": bce_negative,
            "vae_recon": recon,
            "vae_kl": kl,
        }

    def jvision_layout(self, tree):
        """jvision's variables in torch's orders: the flattened map's (h, w, C) -> (C, h, w), the
        scalar gain and bias as the adjust conv, the bank's maps as (C, h, w)."""
        if "bank" in tree:
            tree = {**tree, "bank": np.asarray(tree["bank"]).transpose(0, 3, 1, 2)}
        features = _common.flat_permutation(self.map_shape, (2, 0, 1))
        for name in ("to_mean", "to_logvar"):
            tree = _common.replace(tree, name, lambda n: _common.permute(n, rows=features))
        tree = _common.replace(tree, "expand", lambda n: _common.permute(n, columns=features))
        adjust = {}
        if "response_gain" in tree:
            adjust["kernel"] = np.reshape(np.asarray(tree.pop("response_gain")), (1, 1, 1, 1))
        if "response_bias" in tree:
            adjust["bias"] = np.reshape(np.asarray(tree.pop("response_bias")), (1,))
        if adjust:
            tree["adjust"] = adjust
        return tree


def build(config) -> EncodingDetector:
    return EncodingDetector(config.model)


def jax_noise(config, key, batch_size: int):
    """The ε [B, latent] that jvision's encoding_detector.train_loss draws from `key`
    (`distributions.reparameterized_sample(key, mean, logvar)`: `jax.random.normal(key, shape)`)."""
    import jax

    eps = jax.random.normal(key, (batch_size, config.model.latent_size))
    return {"eps": torch.from_numpy(np.array(eps))}
