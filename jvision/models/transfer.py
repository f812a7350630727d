"""Recognition transfer (PatchVAE's protocol): a pretrained encoder, frozen, and an MLP classifier.

The encoder is a ResNet trunk of `model.scale`; the config's `init_from` copies a PatchVAE or VAE
run's trained `encoder` into it before training (no `init_from`: a randomly initialised trunk,
the floor). Its first `model.freeze_stages` stages are frozen (-1: all); stage 0 is the stem
(conv1, bn1; the authors' `--freeze 4` covers conv1, bn1, relu and maxpool), stage k the k-th
residual layer. BatchNorm scales, offsets and statistics of the encoder are always frozen. The
head sees the flattened feature map: Dropout(0.5) → Dense 512 → ReLU → Dense classes, initialised
N(0, 0.01). Trained with SGD by its config; reports top-1 accuracy.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from jvision import summaries
from jvision.models import _resnet
from jvision.ops import precision

CORRECT_COLOR = (0.1, 0.9, 0.1)
WRONG_COLOR = (0.95, 0.15, 0.1)


def _normalise(images: jax.Array) -> jax.Array:
    return (images - 0.5) / 0.5  # As in pretraining.


class Classifier(nnx.Module):
    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        height, width, channels = config.image_shape
        scale = config.scale
        self.encoder = _resnet.ResNetTrunk(channels, scale, rngs=rngs)
        # BatchNorm statistics stay those of pretraining (or the initial ones): always eval mode.
        self.encoder.set_attributes(use_running_average=True)
        features = (height // scale) * (width // scale) * self.encoder.out_channels
        dense_init = nnx.initializers.normal(0.01)
        self.dropout = nnx.Dropout(0.5)
        self.hidden = nnx.Linear(features, 512, kernel_init=dense_init, rngs=rngs)
        self.logits = nnx.Linear(512, config.num_classes, kernel_init=dense_init, rngs=rngs)

    def __call__(self, images: jax.Array, key: jax.Array | None) -> jax.Array:
        features = self.encoder(_normalise(images))
        x = features.reshape(features.shape[0], -1)
        x = self.dropout(x, rngs=nnx.Rngs(dropout=key) if key is not None else None)
        return precision.float32(self.logits(jax.nn.relu(self.hidden(x))))


def build(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> Classifier:
    return Classifier(config, rngs=rngs)


def _encoder_stage(path) -> int | None:
    """Which encoder stage a parameter path belongs to (None outside the encoder)."""
    keys = [getattr(k, "key", k) for k in path]
    if not keys or keys[0] != "encoder":
        return None
    return int(keys[2]) + 1 if keys[1] == "layers" else 0


def trainable(config, model: Classifier):
    """The filter of parameters the optimizer updates: the head, and the encoder convs of the
    stages not frozen (the first `config.freeze_stages`; -1: every stage is frozen)."""
    num_stages = 1 + len(model.encoder.layers)
    frozen = num_stages if config.freeze_stages < 0 else config.freeze_stages

    def is_trainable(path, value) -> bool:
        if not isinstance(value, nnx.Param):
            return False
        stage = _encoder_stage(path)
        if stage is None:
            return True
        # Encoder convs have no bias; every other encoder parameter is a BatchNorm scale/offset.
        return stage >= frozen and getattr(path[-1], "key", path[-1]) == "kernel"

    return is_trainable


def _per_example(model: Classifier, batch, key):
    logits = model(batch["image"], key)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return logits, {"loss": loss, "top1": correct}


def train_loss(config, model: Classifier, batch, key, step):
    del config, step
    _, terms = _per_example(model, batch, key)
    terms = {name: value.mean() for name, value in terms.items()}
    loss = terms.pop("loss")
    return loss, terms


def eval_metrics(config, model: Classifier, batch, key, step):
    del config, key, step
    return _per_example(model, batch, None)[1]


def predict(config, model: Classifier, batch, step):
    """Class `logits` [B, classes] and the predicted `label` [B]."""
    del config, step
    logits = model(batch["image"], None)
    return {"logits": logits, "label": jnp.argmax(logits, -1)}


def image_summaries(config, model: Classifier, batch, key, step):
    del key
    return {"images": batch["image"], "true": batch["label"], **predict(config, model, batch, step)}


def draw_summaries(config, outputs):
    """Test inputs with the predicted class drawn in the corner, green when right; 16 per row."""
    del config
    pictures = summaries.to_rgb(outputs["images"]).astype(np.float32)
    for image, predicted, true in zip(pictures, outputs["label"], outputs["true"], strict=True):
        color = CORRECT_COLOR if predicted == true else WRONG_COLOR
        summaries.draw_text(image, 1, 1, str(int(predicted)), color)
    return {"predictions": summaries.as_rows(pictures, 16)}
