"""Where metrics, pictures and progress go: the log, TensorBoard event files, and Weights & Biases.

A writer takes scalars, pictures and hyperparameters (`write_scalars`, `write_images`,
`write_hparams`, then `flush` and `close`); `create` gives a run the ones `config.writers` names
(the log always), fanned out by `Writers`. TensorBoard's files are written without TensorFlow
(`jvision.safety.events`): a run imports neither TensorFlow nor CLU's writers, whether or not
TensorFlow is installed, and starts seconds sooner; GPU and TPU images without TensorFlow write the
same files. Scalars are `simple_value` summaries, pictures PNG images, hyperparameters the hparams
plugin's. `WandbWriter` sends the config, every scalar and the pictures to Weights & Biases (the
optional package `wandb`: `pip install jvision[wandb]`). Per-step hooks report the step rate
(`StepRate`) and profile a window of steps (`ProfileWindow`, `config.profile_steps`, with
`jax.profiler`).
"""

import logging
import os
import secrets
import time

import jax
import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import summary_v2

from jvision.errors import UserError
from jvision.safety import events, files

log = logging.getLogger(__name__)


class LogWriter:
    """Scalars as debug lines of the log (`-v 1`); pictures and hyperparameters are not logged."""

    def write_scalars(self, step: int, scalars: dict) -> None:
        log.debug("[%d] %s", step, ", ".join(f"{k}={float(v):.6g}" for k, v in scalars.items()))

    def write_images(self, step: int, images: dict) -> None:
        del step, images

    def write_hparams(self, hparams: dict) -> None:
        del hparams

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardWriter:
    """TensorBoard's event files in `logdir`, written by `events.EventFile`."""

    def __init__(self, logdir: str):
        self._events = events.EventFile(logdir)

    def _add(self, step: int, summary) -> None:
        self._events.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def _write(self, step: int, values) -> None:
        self._add(step, summary_pb2.Summary(value=values))

    def write_scalars(self, step: int, scalars: dict) -> None:
        value = summary_pb2.Summary.Value
        self._write(step, [value(tag=k, simple_value=float(v)) for k, v in scalars.items()])

    def write_images(self, step: int, images: dict) -> None:
        """`images`: name -> [1, H, W, C] uint8."""
        values = []
        for name, picture in images.items():
            picture = np.asarray(picture)[0]
            encoded = summary_pb2.Summary.Image(
                height=picture.shape[0],
                width=picture.shape[1],
                colorspace=picture.shape[2],
                encoded_image_string=files.png_bytes(picture),
            )
            values.append(summary_pb2.Summary.Value(tag=name, image=encoded))
        self._write(step, values)

    def write_hparams(self, hparams: dict) -> None:
        self._add(0, summary_v2.hparams_pb(hparams))

    def flush(self) -> None:
        self._events.flush()

    def close(self) -> None:
        self._events.close()


WANDB_FILE = "wandb.json"  # In the workdir: the W&B run's id, which a resumed run continues.


class WandbWriter:
    """A Weights & Biases run: `wandb.init` with the run's config, then every scalar and picture
    logged at its step. The run's id is kept in the workdir (`WANDB_FILE`), so a resumed run
    logs into the same W&B run. W&B's own settings come from its environment variables
    (`WANDB_PROJECT`, default "jvision"; `WANDB_ENTITY`; `WANDB_MODE=offline` writes the run to
    `<workdir>/wandb/` for `wandb sync`). W&B's console lines are silenced: jvision logs the
    run's id."""

    def __init__(self, logdir: str, config: dict):
        import wandb  # Here: an optional package, imported by the runs that ask for it.

        folder = files.path(logdir)
        record = folder / WANDB_FILE
        run_id = files.read_json(record)["id"] if record.exists() else secrets.token_hex(6)
        if not record.exists():
            files.write_json(record, {"id": run_id})
        try:
            self._run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "jvision"),
                id=run_id,
                resume="allow",
                config=config,
                dir=None if files.is_uri(folder) else os.fspath(folder),
                settings=wandb.Settings(silent=True),
            )
        except Exception as error:  # W&B's own errors (a missing API key, a bad setting).
            raise UserError(f"Weights & Biases did not start: {error}") from None
        self._wandb = wandb
        log.info("W&B run %s (%s)", run_id, self._run.settings.mode)

    def write_scalars(self, step: int, scalars: dict) -> None:
        self._run.log({k: float(v) for k, v in scalars.items()}, step=step)

    def write_images(self, step: int, images: dict) -> None:
        """`images`: name -> [1, H, W, C] uint8."""
        pictures = {name: self._wandb.Image(np.asarray(p)[0]) for name, p in images.items()}
        self._run.log(pictures, step=step)

    def write_hparams(self, hparams: dict) -> None:
        del hparams  # The whole config went to `wandb.init`.

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._run.finish()


class Writers:
    """Several writers as one: each call goes to every writer, in order."""

    def __init__(self, writers: list):
        self.writers = writers

    def write_scalars(self, step: int, scalars: dict) -> None:
        for writer in self.writers:
            writer.write_scalars(step, scalars)

    def write_images(self, step: int, images: dict) -> None:
        for writer in self.writers:
            writer.write_images(step, images)

    def write_hparams(self, hparams: dict) -> None:
        for writer in self.writers:
            writer.write_hparams(hparams)

    def flush(self) -> None:
        for writer in self.writers:
            writer.flush()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


class StepRate:
    """A per-step hook writing `steps_per_sec` every `every_secs` seconds."""

    def __init__(self, writer, every_secs: float = 60.0):
        self.writer, self.every_secs = writer, every_secs
        self._last_time, self._last_step = time.monotonic(), None

    def __call__(self, step: int) -> None:
        now = time.monotonic()
        if self._last_step is None:
            self._last_time, self._last_step = now, step
        elif now - self._last_time >= self.every_secs:
            rate = (step - self._last_step) / (now - self._last_time)
            self.writer.write_scalars(step, {"steps_per_sec": rate})
            self._last_time, self._last_step = now, step


class ProfileWindow:
    """A per-step hook tracing `num_steps` steps from after step `first_step` with
    `jax.profiler`."""

    def __init__(self, logdir: str, first_step: int, num_steps: int):
        self.logdir, self.first_step, self.num_steps = logdir, first_step, num_steps
        self._running = False

    def __call__(self, step: int) -> None:
        if step == self.first_step and not self._running:
            jax.profiler.start_trace(self.logdir)
            self._running = True
        elif self._running and step >= self.first_step + self.num_steps:
            jax.profiler.stop_trace()
            self._running = False


def create(logdir: str, is_chief: bool, names=("tensorboard",), config: dict | None = None):
    """The run's writers: the log, and on process 0 those `names` lists (`config.writers`):
    TensorBoard's events in `logdir`, a W&B run given `config` (the resolved config)."""
    writers = [LogWriter()]
    if is_chief:
        if "tensorboard" in names:
            writers.append(TensorBoardWriter(logdir))
        if "wandb" in names:
            writers.append(WandbWriter(logdir, config or {}))
    return Writers(writers)


def hooks(config, logdir: str, writer, is_chief: bool) -> list:
    """Per-step hooks: the step rate and, when `config.profile_steps`, a profiler window
    (process 0 only)."""
    result = [StepRate(writer)]
    if config.profile_steps and is_chief:
        result.append(ProfileWindow(logdir, config.profile_first_step, config.profile_steps))
    return result
