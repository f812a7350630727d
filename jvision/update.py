"""The training state and the jitted train step: what one optimizer update does.

The state is named: `{"model": the model's variables, "opt": the optimizer's state}`, and with
parameter EMA (`config.ema.decay` > 0) `"ema"`: the averaged parameters (`nnx.Param` only).
It is created directly in its shardings (`jvision.sharding`).

One step: the family's `train_loss` and its gradient with respect to the trainable parameters,
on the whole batch or (`config.grad_accum_steps` = k > 1) summed over k microbatches; one
optimizer update; then the EMA update, average ← decay · average + (1 − decay) · parameters
(`optax.incremental_update`).

Gradient accumulation: microbatch j holds the rows j, j + k, j + 2k, … of the batch, so every
device holds an equal share of each, and together they are the batch's examples. They run in a
loop, or unrolled (`config.grad_accum_loop`, `accumulation_loop`). Each draws
its noise from `fold_in(key, j)` (the same distribution as one batch, not the same draws: a
family's noise is drawn for the shape of what it is given). Losses, terms and gradients are the
microbatches' means, which for a loss that is a mean over examples are the batch's. BatchNorm
normalises each microbatch with its own statistics, and its running averages take one update
per microbatch (k per optimizer step), as gradient accumulation does in PyTorch.

Parameter EMA: only parameters are averaged. Everything else the averaged model holds (BatchNorm
statistics, state computed from data) is the trained model's (`averaged_model_state`).
"""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metrics as clu_metrics
from clu import parameter_overview
from flax import nnx

from jvision import models, optim, sharding
from jvision.data import on_device
from jvision.errors import UserError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """What the training state is made of, without its values: the graphdefs (of `model` and
    `opt`), and the shapes and dtypes and the shardings of its arrays (each keyed as the
    state)."""

    graphdefs: dict
    shapes: dict
    shardings: dict


def create_state(
    config: ml_collections.ConfigDict, family: models.Family, mesh
) -> tuple[StateLayout, dict]:
    """Builds the model, its optimizer and (with EMA) the averaged parameters, directly in their
    shardings."""
    graphdefs = {}

    def build() -> dict:
        model = family.build(nnx.Rngs(config.seed))
        # A family may train only part of its parameters (e.g. a classifier on a frozen encoder).
        transform = optim.make(config.optimizer, config.total_steps)
        optimizer = nnx.Optimizer(model, transform, wrt=family.trainable(model))
        nodes = {"model": model, "opt": optimizer}
        graphdefs.update({name: nnx.graphdef(node) for name, node in nodes.items()})
        state = {name: nnx.state(node) for name, node in nodes.items()}
        if config.ema.decay:
            state["ema"] = nnx.state(model, nnx.Param)  # The average starts at the weights.
        return state

    try:  # Traced once: the jit below finds this trace in JAX's cache (same function, no args).
        shapes = jax.eval_shape(build)
    except (ArithmeticError, ValueError, TypeError) as error:  # E.g. a size of 0.
        message = (str(error).strip().splitlines() or [""])[0][:200]
        raise UserError(
            f"the model does not build with this config ({type(error).__name__}: {message}); "
            "check the model.* values"
        ) from None
    layout = StateLayout(
        graphdefs=graphdefs,
        shapes=shapes,
        shardings=sharding.state_shardings(mesh, shapes, config.mesh.fsdp_min_size),
    )
    state = jax.jit(build, out_shardings=layout.shardings)()
    abstract_model = nnx.merge(graphdefs["model"], shapes["model"])
    parameters = nnx.to_pure_dict(nnx.state(abstract_model, nnx.Param))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(parameters))
    log.info("model %s: %s parameters", config.model.name, f"{count:,}")
    log.debug(
        "parameters:\n%s",
        parameter_overview.get_parameter_overview(parameters, include_stats=False),
    )
    return layout, state


def averaged_model_state(state: dict, weights: str) -> nnx.State:
    """The model state to evaluate: the trained one, with the averaged parameters in place of its
    own when there are some and `weights` is "averaged" (BatchNorm statistics and other state
    stay the trained model's)."""
    if weights == "averaged" and "ema" in state:
        return nnx.merge_state(state["model"], state["ema"])
    return state["model"]


def accumulation_loop(setting: str) -> str:
    """How the microbatches of one step run: "scan" (a loop: the memory of one microbatch) or
    "unrolled" (one after another in a program without a loop). "auto" takes "unrolled" on CPUs,
    where XLA computes a convolution's kernel gradient inside a loop on a slow path (jax issue
    12868: measured 9-10× slower steps on the convolutional models, docs/speed.md), and "scan"
    elsewhere."""
    if setting != "auto":
        return setting
    return "unrolled" if jax.default_backend() == "cpu" else "scan"


def microbatches(batch: dict, count: int) -> dict:
    """[B, ...] -> [count, B / count, ...]: microbatch j holds rows j, j + count, j + 2·count, …"""
    return jax.tree.map(
        lambda x: x.reshape(x.shape[0] // count, count, *x.shape[1:]).swapaxes(0, 1), batch
    )


def _metric_collection(names) -> type[clu_metrics.Collection]:
    return clu_metrics.Collection.create(**{n: clu_metrics.Average.from_output(n) for n in names})


def make_train_step(
    config: ml_collections.ConfigDict,
    family: models.Family,
    layout: StateLayout,
    mesh,
    data: on_device.Input,
):
    """Returns the jitted `(state, metrics, arrays, inputs, step) -> (state, metrics)` and its
    metrics class: the batch is `data.materialize(arrays, inputs, step)` (the inputs themselves
    when the data are on the host; gathered from `data.arrays` when on the devices).

    `state` and `metrics` are donated; the inputs are split over the mesh, the data's arrays
    replicated, and the state keeps its shardings. Randomness comes from
    `fold_in(key(seed), step)`, so a resumed run takes exactly the steps of an unbroken one.
    """
    base_key = jax.random.key(config.seed)
    graphdefs = layout.graphdefs
    accumulate, decay = config.grad_accum_steps, config.ema.decay
    loop = accumulation_loop(config.grad_accum_loop)
    if config.batch_size % (accumulate * jax.device_count()):
        raise UserError(
            f"batch_size {config.batch_size} is not divisible by grad_accum_steps {accumulate} × "
            f"{jax.device_count()} devices: each microbatch is split over every device"
        )

    def loss_and_terms(model_state, batch, key):
        model = nnx.merge(graphdefs["model"], model_state)
        return family.train_loss(model, batch, key, jnp.int32(0))

    _, term_shapes = jax.eval_shape(loss_and_terms, layout.shapes["model"], data.spec, base_key)
    if "loss" in term_shapes or "grad_norm" in term_shapes:
        raise TypeError(
            f"the {family.name} family's train_loss returns a term named 'loss' or 'grad_norm': "
            "the trainer logs those itself (the loss is train_loss's first result)"
        )
    # grad_norm: the global norm of the gradient before any clipping (`optimizer.clip_norm`).
    metrics_class = _metric_collection(dict.fromkeys(["loss", *term_shapes, "grad_norm"]))

    def gradients(model, wrt, batch, key, step):
        """`((loss, terms), grads)` of the batch, accumulated over microbatches when asked."""
        grad_fn = nnx.value_and_grad(family.train_loss, argnums=nnx.DiffState(0, wrt), has_aux=True)
        if accumulate == 1:
            return grad_fn(model, batch, key, step)

        def add(carry, inputs):
            model_state, totals = carry
            microbatch, index = inputs
            model = nnx.merge(graphdefs["model"], model_state)
            outputs = grad_fn(model, microbatch, jax.random.fold_in(key, index), step)
            return (nnx.state(model), jax.tree.map(jnp.add, totals, outputs)), None

        zeros = jax.tree.map(jnp.zeros_like, nnx.state(model, wrt))
        terms = {name: jnp.zeros(s.shape, s.dtype) for name, s in term_shapes.items()}
        carry = (nnx.state(model), ((jnp.zeros(()), terms), zeros))
        parts = microbatches(batch, accumulate)
        if loop == "scan":
            carry, _ = jax.lax.scan(add, carry, (parts, jnp.arange(accumulate)))
        else:  # Unrolled: one program without a loop.
            for index in range(accumulate):
                part = jax.tree.map(lambda x, index=index: x[index], parts)
                carry, _ = add(carry, (part, index))
        model_state, totals = carry
        nnx.update(model, model_state)  # BatchNorm's running statistics, one update each.
        return jax.tree.map(lambda total: total / accumulate, totals)

    def train_step(state, metrics, arrays, inputs, step):
        batch = data.materialize(arrays, inputs, step)
        model = nnx.merge(graphdefs["model"], state["model"])
        optimizer = nnx.merge(graphdefs["opt"], state["opt"])
        key = jax.random.fold_in(base_key, step)
        (loss, terms), grads = gradients(model, optimizer.wrt, batch, key, step)
        optimizer.update(model, grads)
        new_metrics = metrics_class.single_from_model_output(
            **{"loss": loss, **terms, "grad_norm": optax.tree.norm(grads)}
        )
        new_state = {"model": nnx.state(model), "opt": nnx.state(optimizer)}
        if decay:
            params = nnx.state(model, nnx.Param)
            new_state["ema"] = optax.incremental_update(params, state["ema"], 1 - decay)
        return new_state, metrics.merge(new_metrics)

    replicated, batch_sharded = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    jitted = jax.jit(
        train_step,
        in_shardings=(
            layout.shardings,
            replicated,
            jax.tree.map(lambda _: replicated, data.arrays),
            batch_sharded,
            replicated,
        ),
        out_shardings=(layout.shardings, replicated),
        donate_argnums=(0, 1),
    )
    return jitted, metrics_class
