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

import logging
import math
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
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
    update,
    writers,
    zoo,
)
from jvision.data import pipeline
from jvision.errors import UserError
from jvision.safety import checkpoints, files, rundir

log = logging.getLogger(__name__)


def itstime(step: int, every: int, total: int) -> bool:
    """Whether a periodic action (log, save, evaluate) is due after `step` steps: every `every`
    steps, and at the last step."""
    return step == total or (every > 0 and step % every == 0)


def _check_finite(values: dict[str, float], step: int, run: rundir.RunDir) -> None:
    bad = sorted(k for k, v in values.items() if not math.isfinite(v))
    if bad:
        last = run.latest_step()
        kept = f"the last good checkpoint is step {last}" if last is not None else "no checkpoint"
        raise UserError(
            f"{', '.join(bad)} became non-finite by step {step}; nothing was saved after it "
            f"({kept} in {run.checkpoints_dir}); lower optimizer.learning_rate or check the data"
        )


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
    averaged = {name: bool(c["ema"]["decay"]) for name, c in (("saved", saved), ("this", current))}
    if averaged["saved"] != averaged["this"]:
        written = "with" if averaged["saved"] else "without"
        raise UserError(
            f"checkpoint {run.checkpoints_dir}/{intact.step} was written {written} parameter EMA "
            f"(ema.decay={saved['ema']['decay']}); resume with that ema.decay or use a new "
            "--workdir"
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
    `config.data.eval_split`, of the averaged parameters with EMA unless `ema.evaluate` says
    "live"."""

    def __init__(self, family: models.Family, config, mesh, layout: update.StateLayout):
        graphdef, shardings = layout.graphdefs["model"], layout.shardings["model"]
        self.graphdef = graphdef
        self.weights = config.ema.evaluate
        self.calibrate = calibration.calibrator(family, config, mesh, graphdef, shardings)
        self.evaluators = metrics.build(family, config, mesh)
        self.pictures = pictures.Pictures(family, mesh, config.seed, config.num_summary_images)
        self.summary_batch = pipeline.first_batch(config, config.data.eval_split)

    def __call__(self, state: dict, step: int, final: bool):
        """`(the trained model's state with the calibration, the metrics, the pictures as
        [1, H, W, C] uint8)` of the training state `state`."""
        evaluated = self.calibrate(update.averaged_model_state(state, self.weights), step)
        results = metrics.run_all(self.evaluators, self.graphdef, evaluated, step, final)
        grids = self.pictures(self.graphdef, evaluated, self.summary_batch, step)
        model_state = evaluated
        if evaluated is not state["model"] and "ema" in state:  # Keep the trained parameters.
            calibrated = nnx.filter_state(evaluated, nnx.Not(nnx.Param))
            model_state = nnx.merge_state(state["model"], calibrated)
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
    zoo.refuse_writing(workdir, "--workdir")
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
    layout, state = update.create_state(config, family, mesh)  # Refuses one that cannot build.

    # ----------------------------------------------------------------------- data & step
    data = pipeline.training_input(config, family.train_examples, mesh)
    train_data = data.batches
    train_step, TrainMetrics = update.make_train_step(config, family, layout, mesh, data)
    evaluate = Evaluation(family, config, mesh, layout)

    # ----------------------------------------------------------------------- restore
    with rundir.RunDir(workdir, config.keep_checkpoints) as run:
        state, step = _resume_or_begin(run, config, state, train_data)
        run.start(saved_config)  # The run passed every check: now it may write.
        writer = writers.create(str(workdir), run.is_chief, config.writers, saved_config)
        run.on_close(writer.close)
        if not step:
            settings = config_overrides.flatten(config.to_dict())
            writer.write_hparams({k: v for k, v in settings.items() if _is_scalar(v)})

        def evaluate_and_write(step: int, final: bool) -> tuple[dict, dict, dict]:
            """`(the calibrated model state, metrics, pictures)` of an evaluation, written to
            the log and TensorBoard."""
            model_state, results, pictures = evaluate(state, step, final)
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
        learning_rate = optim.learning_rate_schedule(config.optimizer, total)
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
                if log_now:  # With the rate of the step just taken (count step - 1).
                    values["train/learning_rate"] = float(learning_rate(step - 1))
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
