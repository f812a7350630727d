"""The one trainer: any model family, any number of devices, resumable, logged.

    metrics = train_and_evaluate(config, workdir)

Read top to bottom: checks → mesh → data → model and optimizer → steps → restore → loop → final
evaluation. The trainer knows model families only through `jvision.models` (build, train_loss,
eval_metrics, image_summaries) and evaluations only through `jvision.evaluators`.
"""

import functools
import json
import logging
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import metric_writers, parameter_overview, periodic_actions
from clu import metrics as clu_metrics
from flax import nnx

from jvision import checkpoint, evaluators, models, optim, sharding, summaries
from jvision.data import pipeline
from jvision.errors import UserError

RESULTS_FILE = "results.json"


def _metric_collection(names) -> type[clu_metrics.Collection]:
    return clu_metrics.Collection.create(**{n: clu_metrics.Average.from_output(n) for n in names})


def _check_finite(values: dict[str, float], step: int, ckpts: checkpoint.Checkpoints) -> None:
    bad = sorted(k for k, v in values.items() if not math.isfinite(v))
    if bad:
        last = ckpts.latest_step()
        kept = f"the last good checkpoint is step {last}" if last is not None else "no checkpoint"
        raise UserError(
            f"{', '.join(bad)} became non-finite by step {step}; nothing was saved after it "
            f"({kept} in {ckpts.directory}); lower optimizer.learning_rate or check the data"
        )


def _write_json(path: str, payload) -> None:
    if jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True, default=str)


def create_state(config: ml_collections.ConfigDict, family, mesh):
    """Builds the model and its optimizer; returns their graphdef and state, replicated."""
    model = family.build(config.model, nnx.Rngs(config.seed))
    # A family may train only part of its parameters (e.g. a classifier on a frozen encoder).
    trainable = family.trainable(model) if hasattr(family, "trainable") else nnx.Param
    optimizer = nnx.Optimizer(model, optim.make(config.optimizer), wrt=trainable)
    logging.info(
        "parameters:\n%s",
        parameter_overview.get_parameter_overview(nnx.to_pure_dict(nnx.state(model, nnx.Param))),
    )
    graphdef, state = nnx.split((model, optimizer))
    return graphdef, jax.device_put(state, sharding.replicated(mesh))


def make_train_step(config: ml_collections.ConfigDict, family, graphdef, state, mesh, batch_spec):
    """Returns the jitted `(state, metrics, batch, step) -> (state, metrics)` and its metrics class.

    `state` and `metrics` are donated; the batch is split over the `data` axis. Randomness comes
    from `fold_in(key(seed), step)`, so a resumed run takes exactly the steps of an unbroken one.
    """
    base_key = jax.random.key(config.seed)

    def loss_and_terms(state, batch, key):
        model, _ = nnx.merge(graphdef, state)
        return family.train_loss(model, batch, key, jnp.int32(0))

    _, term_shapes = jax.eval_shape(loss_and_terms, state, batch_spec, base_key)
    metrics_class = _metric_collection(dict.fromkeys(["loss", *term_shapes]))

    def train_step(state, metrics, batch, step):
        model, optimizer = nnx.merge(graphdef, state)
        key = jax.random.fold_in(base_key, step)
        trainable = nnx.DiffState(0, optimizer.wrt)
        grad_fn = nnx.value_and_grad(family.train_loss, argnums=trainable, has_aux=True)
        (loss, terms), grads = grad_fn(model, batch, key, step)
        optimizer.update(model, grads)
        new_metrics = metrics_class.single_from_model_output(**{"loss": loss, **terms})
        return nnx.state((model, optimizer)), metrics.merge(new_metrics)

    replicated, batch_sharded = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    jitted = jax.jit(
        train_step,
        in_shardings=(replicated, replicated, batch_sharded, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=(0, 1),
    )
    return jitted, metrics_class


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains `config` in `workdir` (resuming from its latest checkpoint) and evaluates.

    Returns the final evaluation's metrics, which are also written to `workdir/results.json`.
    """
    # ----------------------------------------------------------------------- checks & outputs
    family = models.get(config.model.name)
    for name in ("batch_size", "eval_batch_size"):
        if config[name] % jax.device_count():
            raise UserError(
                f"{name} {config[name]} is not divisible by {jax.device_count()} devices; "
                f"use a multiple of {jax.device_count()}"
            )
    os.makedirs(workdir, exist_ok=True)
    _write_json(os.path.join(workdir, "config.json"), config.to_dict())
    writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=True
    )

    # ----------------------------------------------------------------------- mesh & data
    mesh = sharding.data_mesh()
    logging.info("mesh: %d devices over %d processes", jax.device_count(), jax.process_count())
    train_data = pipeline.train_iterator(config)
    evals = evaluators.build(family, config, mesh)
    summary_batch = next(iter(pipeline.EvalData(config, config.data.eval_split)))
    summary_batch = jax.tree.map(lambda x: x[: config.num_summary_images], summary_batch)

    # ----------------------------------------------------------------------- model & step
    graphdef, state = create_state(config, family, mesh)
    train_batch_spec = {  # Train batches hold the eval batch's fields, without the padding mask.
        k: jax.ShapeDtypeStruct((config.batch_size, *v.shape[1:]), v.dtype)
        for k, v in summary_batch.items()
        if k != "mask"
    }
    train_step, TrainMetrics = make_train_step(
        config, family, graphdef, state, mesh, train_batch_spec
    )
    replicated = sharding.replicated(mesh)

    @functools.partial(jax.jit, out_shardings=replicated)
    def summary_step(state, batch):
        model, _ = nnx.merge(graphdef, state)
        model.eval()
        return family.image_summaries(model, batch, jax.random.key(config.seed))

    def evaluate(step: int, final: bool = False) -> dict[str, float]:
        results = {}
        for evaluator in evals:
            results.update(evaluator.run(graphdef, state))
        writer.write_scalars(step, results)
        grids = jax.device_get(summary_step(state, summary_batch))
        pictures = {name: summaries.image_grid(grid) for name, grid in grids.items()}
        writer.write_images(step, pictures)
        if final and jax.process_index() == 0:  # The last pictures also go to workdir/images.
            os.makedirs(os.path.join(workdir, "images"), exist_ok=True)
            for name, picture in pictures.items():
                summaries.save_png(os.path.join(workdir, "images", f"{name}.png"), picture[0])
        logging.info("step %d: %s", step, results)
        return results

    # ----------------------------------------------------------------------- restore
    ckpts = checkpoint.Checkpoints(workdir, config.keep_checkpoints)
    restored = ckpts.restore(state, train_data, config)
    step = 0
    if restored is not None:
        state, step = restored
        logging.info("resuming from step %d", step)
    else:
        writer.write_hparams({k: v for k, v in _flatten(config.to_dict()).items() if _is_scalar(v)})

    # ----------------------------------------------------------------------- train loop
    try:
        hooks = [periodic_actions.ReportProgress(num_train_steps=config.total_steps, writer=writer)]
        if config.profile_steps:
            hooks.append(
                periodic_actions.Profile(
                    logdir=workdir,
                    num_profile_steps=config.profile_steps,
                    profile_duration_ms=None,  # The window is `profile_steps` long, however fast.
                    first_profile=config.profile_first_step,
                    every_secs=None,
                )
            )
        metrics = jax.device_put(TrainMetrics.empty(), replicated)
        while step < config.total_steps:
            batch = sharding.global_batch(mesh, next(train_data))
            state, metrics = train_step(state, metrics, batch, jnp.int32(step))
            step += 1
            for hook in hooks:
                hook(step)
            is_last = step == config.total_steps
            if step % config.log_every_steps == 0 or step % config.ckpt_every_steps == 0 or is_last:
                values = {f"train/{k}": float(v) for k, v in metrics.compute().items()}
                _check_finite(values, step, ckpts)
                if step % config.log_every_steps == 0 or is_last:
                    writer.write_scalars(step, values)
                    metrics = jax.device_put(TrainMetrics.empty(), replicated)
            if step % config.ckpt_every_steps == 0 or is_last:
                ckpts.save(step, state, train_data, config)
            if step % config.eval_every_steps == 0 and not is_last:
                evaluate(step)

        # ------------------------------------------------------------------- final evaluation
        results = evaluate(step, final=True)
        _write_json(os.path.join(workdir, RESULTS_FILE), {"step": step, "metrics": results})
    finally:  # Also on errors: finish the checkpoint being written and flush the logs.
        ckpts.close()
        writer.close()
    return results


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _is_scalar(value) -> bool:
    return isinstance(value, (int, float, str, bool, np.number))
