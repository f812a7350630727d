"""The one trainer: any model family, any number of devices and processes, resumable, logged.

    metrics = train_and_evaluate(config, workdir)

Read top to bottom: checks → mesh → data → model and optimizer → steps → restore (or initialise
from another run) → loop (train → log → save → evaluate) → final evaluation → its checkpoint →
results. The trainer knows model families only through the contract of `jvision.models` and
evaluations only through `jvision.evaluation`.

The training state is named: `{"model": the model's variables, "opt": the optimizer's state}`,
created directly in its shardings (`jvision.sharding`). SIGTERM/SIGINT stop the loop at a step
boundary after a checkpoint (`jvision.preemption`).
"""

import dataclasses
import logging
import math
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metrics as clu_metrics
from clu import parameter_overview
from flax import nnx

from jvision import (
    checkpoint,
    config_lib,
    evaluation,
    init_from,
    logs,
    models,
    optim,
    preemption,
    sharding,
    summaries,
    writers,
)
from jvision import workdir as workdir_lib
from jvision.data import on_device, pipeline
from jvision.errors import UserError, storage_failure

log = logging.getLogger(__name__)


def itstime(step: int, every: int, total: int) -> bool:
    """Whether a periodic action (log, save, evaluate) is due after `step` steps: every `every`
    steps, and at the last step."""
    return step == total or (every > 0 and step % every == 0)


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


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """What the training state `{"model", "opt"}` is made of, without its values: the graphdefs,
    the shapes and dtypes, and the shardings of its arrays (each a dict keyed `model`, `opt`)."""

    graphdefs: dict
    shapes: dict
    shardings: dict


def create_state(
    config: ml_collections.ConfigDict, family: models.Family, mesh
) -> tuple[StateLayout, dict]:
    """Builds the model and its optimizer, directly in their shardings (`jvision.sharding`)."""
    graphdefs = {}

    def build() -> dict:
        model = family.build(config.model, nnx.Rngs(config.seed))
        # A family may train only part of its parameters (e.g. a classifier on a frozen encoder).
        optimizer = nnx.Optimizer(model, optim.make(config.optimizer), wrt=family.trainable(model))
        nodes = {"model": model, "opt": optimizer}
        graphdefs.update({name: nnx.graphdef(node) for name, node in nodes.items()})
        return {name: nnx.state(node) for name, node in nodes.items()}

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

    def loss_and_terms(model_state, batch, key):
        model = nnx.merge(graphdefs["model"], model_state)
        return family.train_loss(model, batch, key, jnp.int32(0))

    _, term_shapes = jax.eval_shape(loss_and_terms, layout.shapes["model"], data.spec, base_key)
    # grad_norm: the global norm of the gradient before any clipping (`optimizer.clip_norm`).
    metrics_class = _metric_collection(dict.fromkeys(["loss", *term_shapes, "grad_norm"]))

    def train_step(state, metrics, arrays, inputs, step):
        batch = data.materialize(arrays, inputs, step)
        model = nnx.merge(graphdefs["model"], state["model"])
        optimizer = nnx.merge(graphdefs["opt"], state["opt"])
        key = jax.random.fold_in(base_key, step)
        trainable = nnx.DiffState(0, optimizer.wrt)
        grad_fn = nnx.value_and_grad(family.train_loss, argnums=trainable, has_aux=True)
        (loss, terms), grads = grad_fn(model, batch, key, step)
        optimizer.update(model, grads)
        new_metrics = metrics_class.single_from_model_output(
            **{"loss": loss, **terms, "grad_norm": optax.tree.norm(grads)}
        )
        return {"model": nnx.state(model), "opt": nnx.state(optimizer)}, metrics.merge(new_metrics)

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


def _open_workdir(workdir, config, state, train_data):
    """Locks the workdir and restores its newest intact checkpoint (or initialises from
    `config.init_from`), writing nothing else. Returns `(lock, checkpoints, state, step)`;
    step 0 for a new run. On a refusal the lock is released and a workdir made here removed."""
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"--workdir {workdir} is a file, not a directory")
    existed = workdir.exists()
    lock = workdir_lib.Lock(workdir)
    ckpts = None
    try:
        if jax.process_index() == 0:  # One lock per run: on process 0.
            lock.acquire()
        ckpts = checkpoint.Checkpoints(workdir, config.keep_checkpoints)
        restored = ckpts.restore(state, train_data, config)
        if restored is not None:
            state, step = restored
            log.info("workdir %s: resuming from step %d", workdir, step)
            return lock, ckpts, state, step
        if (workdir / workdir_lib.RESULTS_FILE).exists():
            raise UserError(
                f"{workdir} has a {workdir_lib.RESULTS_FILE} but no checkpoints: a finished run "
                "whose checkpoints were removed; use a new --workdir (or remove "
                f"{workdir_lib.RESULTS_FILE} to train again here)"
            )
        if config.init_from.workdir:
            init_from.apply(state["model"], config.init_from, config.model)
        log.info("workdir %s: a new run", workdir)
        return lock, ckpts, state, 0
    except BaseException:
        if ckpts is not None:  # Orbax's background threads must end before the interpreter.
            ckpts.close()
        lock.release()
        if not existed and workdir.exists() and not any(workdir.iterdir()):
            workdir.rmdir()
        raise


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains `config` in `workdir` (resuming from its newest intact checkpoint) and evaluates.

    Returns the final evaluation's metrics, which are also written to `workdir/results.json`.
    Raises `preemption.Stopped` after saving a checkpoint when SIGTERM or SIGINT stop the run,
    and `UserError` for bad input, before writing anything.
    """
    # ----------------------------------------------------------------------- checks
    started = time.monotonic()
    config_lib.validate(config)
    family = models.get(config.model.name)
    if not str(workdir).strip():
        raise UserError("the workdir is empty; give the run's directory")
    try:
        workdir = workdir_lib.path(workdir)
    except OSError as error:
        raise UserError(f"--workdir {workdir}: {error}") from error
    is_chief = jax.process_index() == 0  # Only process 0 writes files other than checkpoints.

    # ----------------------------------------------------------------------- mesh & data
    mesh = sharding.make_mesh(config.mesh)
    log.info(
        "%s, %s, mesh %s",
        logs.count(jax.device_count(), f"{jax.devices()[0].platform.upper()} device"),
        logs.count(jax.process_count(), "process"),
        " × ".join(f"{axis} {size}" for axis, size in mesh.shape.items()),
    )
    data = pipeline.train_input(config, models.bind(family.train_examples, config.model), mesh)
    train_data = data.batches

    # ----------------------------------------------------------------------- model & step
    layout, state = create_state(config, family, mesh)
    train_step, TrainMetrics = make_train_step(config, family, layout, mesh, data)
    evaluate = evaluation.Evaluation(
        family, config, mesh, layout.graphdefs["model"], layout.shardings["model"]
    )

    # ----------------------------------------------------------------------- restore
    try:
        lock, ckpts, state, step = _open_workdir(workdir, config, state, train_data)
    except OSError as error:  # The workdir cannot be created or read.
        raise UserError(f"--workdir {workdir}: {error.strerror or error}") from error
    saved_step = step if step else None
    # Signals stop the run at a step boundary, also while it cleans up (then a second Ctrl-C
    # exits at once). At the end, also on errors: the checkpoint being written is finished or
    # dropped, the logs flushed, the lock released, and the error that stopped the run reported.
    with preemption.StopRequests() as stop, Closing(lock.release, ckpts.close) as closing:
        # ----------------------------------------------------------------------- outputs
        if is_chief:  # The run passed every check: now it may write.
            lock.announce()
            workdir_lib.write_json(workdir / workdir_lib.CONFIG_FILE, config.to_dict())
        writer = writers.create(str(workdir), is_chief)
        closing.add(writer.close)
        if not step:
            settings = config_lib.flatten(config.to_dict())
            writer.write_hparams({k: v for k, v in settings.items() if _is_scalar(v)})

        def evaluate_and_write(step: int, final: bool) -> tuple[dict[str, float], dict]:
            """Evaluates (the model state takes its calibration) and writes the metrics and
            pictures to TensorBoard. Returns the metrics and the pictures."""
            state["model"], results, grids = evaluate(state["model"], step, final)
            pictures = {name: summaries.image_grid(grid) for name, grid in grids.items()}
            writer.write_scalars(step, results)
            writer.write_images(step, pictures)
            log.info("step %d, evaluation: %s", step, logs.metrics(results))
            return results, pictures

        # ----------------------------------------------------------------------- train loop
        total = config.total_steps
        hooks = writers.hooks(config, str(workdir), writer, is_chief)
        replicated = sharding.replicated(mesh)
        metrics = jax.device_put(TrainMetrics.empty(), replicated)
        progress = logs.Progress(step, total)
        while True:
            if stop.should_stop(step):  # Every process asks at every step.
                if saved_step != step:
                    ckpts.save(step, state, train_data, config)
                ckpts.wait()
                raise preemption.Stopped(step, stop.signal_name, str(ckpts.directory))
            if step >= total:
                break
            inputs = sharding.global_batch(mesh, next(train_data))
            state, metrics = train_step(state, metrics, data.arrays, inputs, jnp.int32(step))
            step += 1
            for hook in hooks:
                hook(step)
            log_now = itstime(step, config.log_every_steps, total)
            # The last step's checkpoint is saved after the final evaluation, below.
            save = step < total and itstime(step, config.ckpt_every_steps, total)
            if log_now or save:  # Never save a non-finite state.
                values = {f"train/{k}": float(v) for k, v in metrics.compute().items()}
                _check_finite(values, step, ckpts)
                if log_now:
                    writer.write_scalars(step, values)
                    log.info(progress.line(step, values["train/loss"]))
                    metrics = jax.device_put(TrainMetrics.empty(), replicated)
            if save:
                ckpts.save(step, state, train_data, config)
                saved_step = step
            if step < total and itstime(step, config.eval_every_steps, total):
                evaluate_and_write(step, final=False)

        # ----------------------------------------------------------------------- final evaluation
        results, pictures = evaluate_and_write(step, final=True)
        if saved_step != step:  # The checkpoint the results are of (calibrated, if so).
            ckpts.save(step, state, train_data, config)
        ckpts.wait()  # Committed before anything claims it.
        if is_chief:
            images = workdir / workdir_lib.IMAGES_DIR
            images.mkdir(parents=True, exist_ok=True)
            for name, picture in pictures.items():
                workdir_lib.save_png(images / f"{name}.png", picture[0])
            workdir_lib.write_json(
                workdir / workdir_lib.RESULTS_FILE, {"step": step, "metrics": results}
            )
    log.info(
        "done: step %d in %s; %s; results in %s",
        step,
        logs.duration(time.monotonic() - started),
        logs.metrics(results),
        workdir / workdir_lib.RESULTS_FILE,
    )
    return results


class Closing:
    """Calls its closers at exit, the last added first. An error while closing is logged, and
    raised only when no other error is on its way out (it must not hide what stopped the run)."""

    def __init__(self, *closers):
        self._closers = list(closers)

    def add(self, closer) -> None:
        self._closers.append(closer)

    def __enter__(self) -> "Closing":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        first = None
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception as failure:
                quiet = error is not None and storage_failure(failure)  # Said once, by the error.
                (log.debug if quiet else log.warning)(
                    "while closing the run: %s: %s", type(failure).__name__, failure
                )
                first = first or failure
        if first is not None and error is None:
            raise first


def _is_scalar(value) -> bool:
    return isinstance(value, (int, float, str, bool, np.number))
