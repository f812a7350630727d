"""The one trainer: any model family, any number of devices and processes, resumable, logged.

    metrics = train_and_evaluate(config, workdir)

Read top to bottom: checks → mesh → model and optimizer → data → steps → restore (or initialise
from another run) → loop (train → log → save → evaluate) → final evaluation → its checkpoint →
results. The trainer knows model families only through the contract of `jvision.models`, and
metrics only through `jvision.metrics`.

The training state is named: `{"model": the model's variables, "opt": the optimizer's state}`,
created directly in its shardings (`jvision.sharding`). What a run guarantees (one writer,
checksummed checkpoints, stops at a step boundary with a checkpoint, nothing half-written) comes
through one door, `jvision.safety.rundir.RunDir`; which checkpoint a run may resume from (the
same model) is decided here.
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
    calibration,
    config_checks,
    config_overrides,
    config_saved,
    init_from,
    logs,
    metrics,
    models,
    optim,
    pictures,
    sharding,
    summaries,
    writers,
)
from jvision.data import on_device, pipeline
from jvision.errors import UserError
from jvision.safety import checkpoints, files, rundir

log = logging.getLogger(__name__)


def itstime(step: int, every: int, total: int) -> bool:
    """Whether a periodic action (log, save, evaluate) is due after `step` steps: every `every`
    steps, and at the last step."""
    return step == total or (every > 0 and step % every == 0)


def _metric_collection(names) -> type[clu_metrics.Collection]:
    return clu_metrics.Collection.create(**{n: clu_metrics.Average.from_output(n) for n in names})


def _check_finite(values: dict[str, float], step: int, run: rundir.RunDir) -> None:
    bad = sorted(k for k, v in values.items() if not math.isfinite(v))
    if bad:
        last = run.latest_step()
        kept = f"the last good checkpoint is step {last}" if last is not None else "no checkpoint"
        raise UserError(
            f"{', '.join(bad)} became non-finite by step {step}; nothing was saved after it "
            f"({kept} in {run.checkpoints_dir}); lower optimizer.learning_rate or check the data"
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
        model = family.build(nnx.Rngs(config.seed))
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
    if "loss" in term_shapes or "grad_norm" in term_shapes:
        raise TypeError(
            f"the {family.name} family's train_loss returns a term named 'loss' or 'grad_norm': "
            "the trainer logs those itself (the loss is train_loss's first result)"
        )
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


def _resume_or_begin(run: rundir.RunDir, config, state: dict, train_data) -> tuple[dict, int]:
    """The state to train from and its step: the newest intact checkpoint's, or a new run's
    (step 0, initialised from `config.init_from` when it names a run). A checkpoint written for
    another model is refused, naming the model keys that differ; other settings changed since
    (more steps, another eval split) are allowed, and logged."""
    intact = run.newest_intact()
    if intact is None:
        if (run.workdir / files.RESULTS_FILE).exists():
            raise UserError(
                f"{run.workdir} has a {files.RESULTS_FILE} but no checkpoints: a finished run "
                "whose checkpoints were removed; use a new --workdir (or remove "
                f"{files.RESULTS_FILE} to train again here)"
            )
        if config.init_from.workdir:
            init_from.apply(state["model"], config.init_from, config.model)
        log.info("workdir %s: a new run", run.workdir)
        return state, 0
    # Keys added since the checkpoint was written take their defaults (`from_saved`).
    saved = config_saved.as_json(config_saved.from_saved(intact.config).to_dict())
    current = config_saved.as_json(config.to_dict())
    changed = config_saved.model_differences(saved["model"], current["model"])
    if changed:
        raise UserError(
            f"checkpoint {run.checkpoints_dir}/{intact.step} was written for a different model "
            f"(model.{', model.'.join(changed)} differ); use a new --workdir or the config that "
            "wrote it"
        )
    state = run.restore(intact.step, state, train_data)
    if intact.skipped:
        log.warning(
            "resuming from step %d, the newest intact checkpoint; skipped damaged step(s) %s "
            "(kept in %s)",
            intact.step,
            ", ".join(map(str, intact.skipped)),
            run.workdir / checkpoints.DAMAGED_DIR,
        )
    changes = config_saved.settings_changes(saved, current)
    if changes:
        log.warning("resuming with settings changed since: %s", "; ".join(changes))
    log.info("workdir %s: resuming from step %d", run.workdir, intact.step)
    return state, intact.step


class Evaluation:
    """What the trainer does at an evaluation: the family's calibration, the configured metrics
    (`jvision.metrics`), and pictures of the first `config.num_summary_images` examples of
    `config.data.eval_split`."""

    def __init__(self, family: models.Family, config, mesh, layout: StateLayout):
        graphdef, shardings = layout.graphdefs["model"], layout.shardings["model"]
        self.graphdef = graphdef
        self.calibrate = calibration.calibrator(family, config, mesh, graphdef, shardings)
        self.evaluators = metrics.build(family, config, mesh)
        self.pictures = pictures.Pictures(family, mesh, config.seed, config.num_summary_images)
        self.summary_batch = pipeline.first_batch(config, config.data.eval_split)

    def __call__(self, model_state, step: int, final: bool):
        """`(the calibrated model state, its metrics, its pictures as [1, H, W, C] uint8)`."""
        model_state = self.calibrate(model_state, step)
        results = metrics.run_all(self.evaluators, self.graphdef, model_state, step, final)
        grids = self.pictures(self.graphdef, model_state, self.summary_batch, step)
        return model_state, results, {k: summaries.image_grid(g) for k, g in grids.items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains `config` in `workdir` (resuming from its newest intact checkpoint) and evaluates.

    Returns the final evaluation's metrics, which are also written to `workdir/results.json`.
    Raises `stops.Stopped` after saving a checkpoint when SIGTERM or SIGINT stop the run, and
    `UserError` for bad input, before writing anything.
    """
    # ----------------------------------------------------------------------- checks
    started = time.monotonic()
    config_checks.validate(config)
    family = models.get(config.model)
    if not str(workdir).strip():
        raise UserError("the workdir is empty; give the run's directory")
    try:
        workdir = files.path(workdir)
    except OSError as error:
        raise UserError(f"--workdir {workdir}: {error}") from error
    saved_config = config_saved.as_json(config.to_dict())

    # ----------------------------------------------------------------------- mesh & model
    mesh = sharding.make_mesh(config.mesh)
    log.info(
        "%s, %s, mesh %s",
        logs.count(jax.device_count(), f"{jax.devices()[0].platform.upper()} device"),
        logs.count(jax.process_count(), "process"),
        " × ".join(f"{axis} {size}" for axis, size in mesh.shape.items()),
    )
    layout, state = create_state(config, family, mesh)  # Refuses a model that does not build.

    # ----------------------------------------------------------------------- data & step
    data = pipeline.training_input(config, family.train_examples, mesh)
    train_data = data.batches
    train_step, TrainMetrics = make_train_step(config, family, layout, mesh, data)
    evaluate = Evaluation(family, config, mesh, layout)

    # ----------------------------------------------------------------------- restore
    with rundir.RunDir(workdir, config.keep_checkpoints) as run:
        state, step = _resume_or_begin(run, config, state, train_data)
        run.start(saved_config)  # The run passed every check: now it may write.
        writer = writers.create(str(workdir), run.is_chief)
        run.on_close(writer.close)
        if not step:
            settings = config_overrides.flatten(config.to_dict())
            writer.write_hparams({k: v for k, v in settings.items() if _is_scalar(v)})

        def evaluate_and_write(step: int, final: bool) -> tuple[dict, dict, dict]:
            """`(the calibrated model state, metrics, pictures)` of an evaluation, written to
            the log and TensorBoard."""
            model_state, results, pictures = evaluate(state["model"], step, final)
            writer.write_scalars(step, results)
            writer.write_images(step, pictures)
            log.info("step %d, evaluation: %s", step, logs.metrics(results))
            return model_state, results, pictures

        # ----------------------------------------------------------------------- train loop
        total = config.total_steps
        hooks = writers.hooks(config, str(workdir), writer, run.is_chief)
        replicated = sharding.replicated(mesh)
        metrics_sum = jax.device_put(TrainMetrics.empty(), replicated)
        progress = logs.Progress(step, total)
        while True:
            if run.stop_requested(step):  # Every process asks at every step.
                run.stop(step, state, train_data, saved_config)
            if step >= total:
                break
            inputs = sharding.global_batch(mesh, next(train_data))
            state, metrics_sum = train_step(
                state, metrics_sum, data.arrays, inputs, jnp.int32(step)
            )
            step += 1
            for hook in hooks:
                hook(step)
            log_now = itstime(step, config.log_every_steps, total)
            # The last step's checkpoint is saved after the final evaluation, below.
            save = step < total and itstime(step, config.ckpt_every_steps, total)
            if log_now or save:  # Never save a non-finite state.
                values = {f"train/{k}": float(v) for k, v in metrics_sum.compute().items()}
                _check_finite(values, step, run)
                if log_now:
                    writer.write_scalars(step, values)
                    log.info(progress.line(step, values["train/loss"]))
                    metrics_sum = jax.device_put(TrainMetrics.empty(), replicated)
            if save:
                run.save(step, state, train_data, saved_config)
            if step < total and itstime(step, config.eval_every_steps, total):
                state["model"], _, _ = evaluate_and_write(step, final=False)

        # ----------------------------------------------------------------------- final evaluation
        run.finishing()  # A signal from here on lets the run end complete.
        state["model"], results, pictures = evaluate_and_write(step, final=True)
        # The checkpoint the results are of (calibrated, if so), then the results.
        run.finish(step, state, train_data, saved_config, results, pictures)
    log.info(
        "done: step %d in %s; %s; results in %s",
        step,
        logs.duration(time.monotonic() - started),
        logs.metrics(results),
        workdir / files.RESULTS_FILE,
    )
    return results


def _is_scalar(value) -> bool:
    return isinstance(value, (int, float, str, bool, np.number))
