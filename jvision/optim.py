"""Optimizers and learning-rate schedules from `config.optimizer`, built from optax.

Optimizers (`optimizer.name`):
- `adam`: Adam with PyTorch-style coupled weight decay (the gradient += wd·param before Adam), as
  torch.optim.Adam: the originals' optimizer.
- `adamw`: `optax.adamw`, decoupled weight decay (the update −= rate·wd·param).
- `sgd`: SGD with momentum (`optimizer.momentum`, `optimizer.nesterov`) and coupled decay, as
  torch.optim.SGD.
Every one clips the gradient to `optimizer.clip_norm` first (when > 0), and with
`optimizer.bias_lr_multiplier` scales the biases' updates.

Schedules (`optimizer.schedule`): the rate of the update at 0-based count `t`; each starts with a
linear warmup from 0 over `optimizer.warmup_steps` (0: none), after which `t' = t - warmup`:
- `piecewise`: `learning_rate`, multiplied by `decay_factor` at each train step of `decay_steps`;
- `constant`: `learning_rate`;
- `cosine`: from `learning_rate` to `end_learning_rate` along half a cosine, over the remaining
  `total_steps - warmup_steps` steps;
- `linear`: the same, along a straight line;
- `rsqrt`: `learning_rate · sqrt(τ / (τ + t'))`, τ = `rsqrt_timescale` (big_vision's inverse
  square root, continuous at the end of the warmup).
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jvision.config_lib import OPTIMIZERS, SCHEDULES
from jvision.errors import UserError


def learning_rate_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """The rate of each update, as the module doc says."""
    kind = opt.get("schedule", "piecewise")
    if kind not in SCHEDULES:
        raise UserError(f"optimizer.schedule={kind!r}; use one of {', '.join(SCHEDULES)}")
    peak, warmup = opt.learning_rate, int(opt.get("warmup_steps", 0))
    end = opt.get("end_learning_rate", 0.0)
    remaining = max(total_steps - warmup, 1)
    if kind == "piecewise":  # Decay steps count train steps from the start, warmup included.
        boundaries = {max(int(step) - warmup, 0): opt.decay_factor for step in opt.decay_steps}
        main = optax.piecewise_constant_schedule(peak, boundaries)
    elif kind == "constant":
        main = optax.constant_schedule(peak)
    elif kind == "cosine":
        main = optax.cosine_decay_schedule(peak, remaining, alpha=end / peak if peak else 0.0)
    elif kind == "linear":
        main = optax.linear_schedule(peak, end, remaining)
    else:
        timescale = float(opt.get("rsqrt_timescale", 10_000))

        def main(count):  # join_schedules also evaluates it before the warmup ends: count < 0.
            return peak * jnp.sqrt(timescale / (timescale + jnp.maximum(count, 0)))

    if not warmup:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def make(opt: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """The optimizer `opt` (the config's `optimizer`) names, for a run of `total_steps`."""
    if opt.name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer.name {opt.name!r}; known: {', '.join(OPTIMIZERS)}")
    schedule = learning_rate_schedule(opt, total_steps)
    clip = [optax.clip_by_global_norm(opt.clip_norm)] if opt.get("clip_norm", 0.0) else []
    if opt.name == "adamw":
        chain = [*clip, optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay)]
    else:
        # Coupled decay (gradient += wd·param before the update), as torch.optim.Adam/SGD do.
        decay = [optax.add_decayed_weights(opt.weight_decay)] if opt.weight_decay else []
        if opt.name == "adam":
            update = optax.scale_by_adam(b1=opt.b1, b2=opt.b2)
        else:
            update = optax.trace(
                decay=opt.get("momentum", 0.0), nesterov=bool(opt.get("nesterov", False))
            )
        chain = [*clip, *decay, update, optax.scale_by_learning_rate(schedule)]
    if opt.get("bias_lr_multiplier", 1.0) != 1.0:  # E.g. the SSD tutorial's biases at 2× rate.
        chain.append(optax.masked(optax.scale(opt.bias_lr_multiplier), _is_bias))
    return optax.chain(*chain)


def _is_bias(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(getattr(key, "key", None) == "bias" for key in path), params
    )
