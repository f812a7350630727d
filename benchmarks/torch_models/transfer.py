"""Twin of jvision/models/transfer.py: a frozen ResNet trunk and a Dropout → Dense 512 → ReLU →
Dense head, trained with SGD.

The encoder stays in eval mode (BatchNorm running statistics) whatever `train()` says; its first
`freeze_stages` stages (-1: all) have no gradient, and its BatchNorm scales and offsets never do,
as jvision's `trainable` filter. The head sees the feature map flattened as (C, h, w); the converter
permutes the hidden layer's input rows from jvision's (h, w, C). The dropout mask enters as
`noise["dropout"]` ([B, features], values 0 or 2, in torch's flattening order).
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import _common, _resnet


class Classifier(nn.Module):
    def __init__(self, model_config):
        super().__init__()
        m = model_config
        height, width, channels = m.image_shape
        self.encoder = _resnet.ResNetTrunk(channels, m.scale)
        self.feature_shape = (height // m.scale, width // m.scale, self.encoder.out_channels)
        features = int(np.prod(self.feature_shape))
        self.dropout = nn.Dropout(0.5)
        self.hidden = nn.Linear(features, 512)
        self.logits = nn.Linear(512, m.num_classes)
        self._freeze(m.freeze_stages)
        self.train()

    def _freeze(self, freeze_stages: int):
        stages = [[self.encoder.conv1, self.encoder.bn1], *self.encoder.layers]
        frozen = len(stages) if freeze_stages < 0 else freeze_stages
        for index, stage in enumerate(stages):
            for module in stage if isinstance(stage, list) else [stage]:
                for name, parameter in module.named_parameters():
                    is_conv_kernel = name.split(".")[-1] == "weight" and parameter.ndim == 4
                    parameter.requires_grad_(index >= frozen and is_conv_kernel)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # Pretraining's BatchNorm statistics, always.
        return self

    def forward(self, images, dropout=None):
        x = self.encoder((images - 0.5) / 0.5).flatten(1)
        x = self.dropout(x) if dropout is None else x * dropout
        return self.logits(torch.relu(self.hidden(x)))

    def sample_noise(self, batch_size: int, generator=None):
        return None  # nn.Dropout draws its own mask.

    def loss(self, batch, noise=None, step=0):
        del step
        logits = self(batch["image"], None if noise is None else noise["dropout"])
        loss = F.cross_entropy(logits, batch["label"])
        top1 = (logits.argmax(-1) == batch["label"]).float().mean()
        return loss, {"top1": top1}

    def jvision_layout(self, tree):
        rows = _common.flat_permutation(self.feature_shape, (2, 0, 1))
        return _common.replace(tree, "hidden", lambda n: _common.permute(n, rows=rows))


def build(config) -> Classifier:
    return Classifier(config.model)


def jax_noise(config, key, batch_size: int):
    """The dropout mask of jvision's transfer.train_loss: `nnx.Dropout(0.5)` called with
    `rngs=nnx.Rngs(dropout=key)` on the [B, h·w·C] features (mask × 2), in torch's order."""
    import jax.numpy as jnp
    from flax import nnx

    m = config.model
    height, width, _ = m.image_shape
    h, w, c = height // m.scale, width // m.scale, 16 * m.scale
    mask = nnx.Dropout(0.5)(jnp.ones((batch_size, h * w * c)), rngs=nnx.Rngs(dropout=key))
    mask = np.array(mask).reshape(batch_size, h, w, c).transpose(0, 3, 1, 2)
    return {"dropout": torch.from_numpy(mask.reshape(batch_size, -1).copy())}
