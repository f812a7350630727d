"""Optimizers from `config.optimizer`, with PyTorch-style (coupled) weight decay."""

import jax
import ml_collections
import optax

from jvision.errors import UserError

NAMES = ("adam", "sgd")


def learning_rate_schedule(opt: ml_collections.ConfigDict) -> optax.Schedule:
    """Constant rate, multiplied by `decay_factor` at each step in `decay_steps`."""
    boundaries = {int(step): opt.decay_factor for step in opt.decay_steps}
    return optax.piecewise_constant_schedule(opt.learning_rate, boundaries)


def make(opt: ml_collections.ConfigDict) -> optax.GradientTransformation:
    if opt.name not in NAMES:
        raise UserError(f"unknown optimizer.name {opt.name!r}; known: {', '.join(NAMES)}")
    # Coupled decay (gradient += wd·param before the update), as torch.optim.Adam/SGD do.
    decay = [optax.add_decayed_weights(opt.weight_decay)] if opt.weight_decay else []
    if opt.name == "adam":
        update = optax.scale_by_adam(b1=opt.b1, b2=opt.b2)
    else:
        update = optax.trace(decay=opt.get("momentum", 0.0))
    clip = [optax.clip_by_global_norm(opt.clip_norm)] if opt.get("clip_norm", 0.0) else []
    chain = [*clip, *decay, update, optax.scale_by_learning_rate(learning_rate_schedule(opt))]
    if opt.get("bias_lr_multiplier", 1.0) != 1.0:  # E.g. the SSD tutorial's biases at 2× rate.
        chain.append(optax.masked(optax.scale(opt.bias_lr_multiplier), _is_bias))
    return optax.chain(*chain)


def _is_bias(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(getattr(key, "key", None) == "bias" for key in path), params
    )
