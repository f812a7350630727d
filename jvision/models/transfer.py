"""Recognition transfer (PatchVAE's protocol): a pretrained encoder, frozen, and an MLP classifier.

The encoder is the ResNet trunk of a PatchVAE or VAE workdir (`model.pretrained_workdir`, its
latest checkpoint; the trunk's shape comes from that run's config), or a randomly initialised trunk
of `model.scale` when no workdir is given (the floor). Its first `model.freeze_stages` stages are
frozen (-1: all); stage 0 is the stem (conv1, bn1; the authors' `--freeze 4` covers conv1, bn1, relu
and maxpool), stage k the k-th residual layer. BatchNorm scales, offsets and statistics of the
encoder are always frozen. The head sees the flattened feature map: Dropout(0.5) → Dense 512 → ReLU
→ Dense classes, initialised N(0, 0.01). Trained with SGD by its config; reports top-1 accuracy.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from jvision import checkpoint, summaries
from jvision.errors import UserError
from jvision.models import _resnet

CORRECT_COLOR = (0.1, 0.9, 0.1)
WRONG_COLOR = (0.95, 0.15, 0.1)


def _normalise(images: jax.Array) -> jax.Array:
    return (images - 0.5) / 0.5  # As in pretraining.


def _pretrained_encoder(workdir: str):
    """The encoder weights and trunk settings of a pretraining workdir."""
    try:
        state, meta = checkpoint.load_state(workdir)
    except Exception as error:  # No checkpoints there, or unreadable ones.
        raise UserError(
            f"cannot read a checkpoint in model.pretrained_workdir {workdir} ({error}); "
            "pretrain one first, e.g. with configs/patchvae_mnist.py"
        ) from error
    pretrained = meta["config"]["model"]
    if pretrained.get("name") != "patchvae":
        raise UserError(
            f"model.pretrained_workdir {workdir} holds a {pretrained.get('name')!r} model; "
            "transfer needs a patchvae (kind patchvae or vae) run"
        )
    return state["0"]["encoder"], pretrained


class Classifier(nnx.Module):
    def __init__(self, model_config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        height, width, channels = model_config.image_shape
        scale, weights = model_config.scale, None
        if model_config.pretrained_workdir:
            weights, pretrained = _pretrained_encoder(model_config.pretrained_workdir)
            scale = pretrained["scale"]
            if tuple(pretrained["image_shape"]) != (height, width, channels):
                raise UserError(
                    f"the pretrained encoder saw images {tuple(pretrained['image_shape'])}, "
                    f"this config has {(height, width, channels)}"
                )
        self.freeze_stages = model_config.freeze_stages
        self.encoder = _resnet.ResNetTrunk(channels, scale, rngs=rngs)
        if weights is not None:
            state = nnx.state(self.encoder)
            nnx.replace_by_pure_dict(state, weights)
            nnx.update(self.encoder, state)
        # BatchNorm statistics stay those of pretraining (or the initial ones): always eval mode.
        self.encoder.set_attributes(use_running_average=True)
        features = (height // scale) * (width // scale) * self.encoder.out_channels
        dense_init = nnx.initializers.normal(0.01)
        self.dropout = nnx.Dropout(0.5)
        self.hidden = nnx.Linear(features, 512, kernel_init=dense_init, rngs=rngs)
        self.logits = nnx.Linear(512, model_config.num_classes, kernel_init=dense_init, rngs=rngs)

    def __call__(self, images: jax.Array, key: jax.Array | None) -> jax.Array:
        features = self.encoder(_normalise(images))
        x = features.reshape(features.shape[0], -1)
        x = self.dropout(x, rngs=nnx.Rngs(dropout=key) if key is not None else None)
        return self.logits(jax.nn.relu(self.hidden(x)))


def build(model_config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> Classifier:
    return Classifier(model_config, rngs=rngs)


def _frozen_stage(path) -> int | None:
    """Which encoder stage a parameter path belongs to (None outside the encoder)."""
    keys = [getattr(k, "key", k) for k in path]
    if not keys or keys[0] != "encoder":
        return None
    return int(keys[2]) + 1 if keys[1] == "layers" else 0


def trainable(model: Classifier):
    """The filter of parameters the optimizer updates: the head and unfrozen encoder convs."""
    num_stages = 1 + len(model.encoder.layers)
    frozen = num_stages if model.freeze_stages < 0 else model.freeze_stages

    def is_trainable(path, value) -> bool:
        if not isinstance(value, nnx.Param):
            return False
        stage = _frozen_stage(path)
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


def train_loss(model: Classifier, batch, key, step):
    del step
    _, terms = _per_example(model, batch, key)
    terms = {name: value.mean() for name, value in terms.items()}
    return terms["loss"], terms


def eval_metrics(model: Classifier, batch, key):
    del key
    return _per_example(model, batch, None)[1]


def image_summaries(model: Classifier, batch, key):
    """Test inputs with the predicted class (first digit of it) drawn, green when right."""
    del key
    logits = model(batch["image"], None)
    predicted = jnp.argmax(logits, -1)
    images = summaries.to_rgb(batch["image"])
    right = predicted == batch["label"]
    digit = predicted % 10
    top, left = jnp.ones_like(digit), jnp.ones_like(digit)
    images = jnp.where(
        right[:, None, None, None],
        summaries.draw_digit(images, top, left, digit, CORRECT_COLOR),
        summaries.draw_digit(images, top, left, digit, WRONG_COLOR),
    )
    return {"predictions": summaries.as_rows(images, 16)}
