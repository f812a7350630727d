"""Where metrics, pictures and progress go: TensorBoard event files and the log.

Events are written in TensorBoard's format by `EventFile`, without TensorFlow: a run imports
neither TensorFlow nor CLU's writers (which need it), whether or not TensorFlow is installed, and
so starts seconds sooner; GPU and TPU images without TensorFlow write the same files. Scalars are
`simple_value` summaries, pictures PNG images, hyperparameters the hparams plugin's; progress
(steps/s) comes from a small hook and profiling (`config.profile_steps`) from `jax.profiler`.

`EventFile` never appends to an object in a bucket: objects there are written whole (TensorBoard's
own TF-free writer appends, which gcsfs turns into an overwrite: each file kept its last record).
"""

import io
import logging
import os
import socket
import time

import jax
import numpy as np

from jvision import workdir as workdir_lib

log = logging.getLogger(__name__)


class LoggingOnly:
    """What processes other than 0 write: the log only."""

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


class EventFile:
    """TensorBoard event files written through `etils.epath`, never appended to in a bucket.

    Records are framed in memory and reach storage at each `flush` (explicit, at `close`, and with
    the first record `flush_secs` after the last flush). On a local disk the new records are
    appended (TensorBoard keeps reading a file it has open). In a bucket (`gs://`, `s3://`) an
    object cannot be appended to, so the whole file is rewritten, as TensorFlow's own GCS writer
    does; once a file holds `max_bytes`, the next record starts a new file (TensorBoard reads every
    event file of a directory, in name order), so that no flush rewrites more than about that.
    """

    def __init__(self, logdir: str, flush_secs: float = 60.0, max_bytes: int = 16 << 20):
        self.folder = workdir_lib.path(logdir)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.flush_secs, self.max_bytes = flush_secs, max_bytes
        self._rewrite = workdir_lib.is_uri(self.folder)
        self._stamp = 0
        self._last_flush = time.monotonic()
        self._next_file()
        self.flush()  # The run shows in TensorBoard from its start.

    def _next_file(self) -> None:
        """Starts the next event file (its name sorts after the previous one's), its first record
        the file version, pending."""
        from tensorboard.compat.proto import event_pb2

        self._stamp = max(int(time.time()), self._stamp + 1)
        name = f"events.out.tfevents.{self._stamp:010d}.{socket.gethostname()}.{os.getpid()}.0"
        self.file = self.folder / name
        self._flushed = bytearray()  # What the file holds, where it is rewritten whole.
        self._size = 0  # The file's length.
        self._pending = io.BytesIO()
        self._frame(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _frame(self, event) -> None:
        from tensorboard.summary.writer.record_writer import RecordWriter

        RecordWriter(self._pending).write(event.SerializeToString())

    def add_event(self, event) -> None:
        if self._size + self._pending.tell() >= self.max_bytes:
            self.flush()
            self._next_file()
        self._frame(event)
        if time.monotonic() - self._last_flush >= self.flush_secs:
            self.flush()

    def flush(self) -> None:
        """Puts the pending records in storage."""
        new = self._pending.getvalue()
        self._last_flush = time.monotonic()
        if not new:
            return
        if self._rewrite:
            self.file.write_bytes(bytes(self._flushed + new))
            self._flushed += new
        else:
            with self.file.open("ab") as file:
                file.write(new)
        self._size += len(new)
        self._pending = io.BytesIO()

    def close(self) -> None:
        self.flush()


class EventWriter(LoggingOnly):
    """A TF-free writer with the part of CLU's `MetricWriter` interface jvision uses."""

    def __init__(self, logdir: str):
        self._events = EventFile(logdir)

    def _add(self, step: int, summary) -> None:
        from tensorboard.compat.proto import event_pb2

        self._events.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def _write(self, step: int, values) -> None:
        from tensorboard.compat.proto import summary_pb2

        self._add(step, summary_pb2.Summary(value=values))

    def write_scalars(self, step: int, scalars: dict) -> None:
        from tensorboard.compat.proto import summary_pb2

        value = summary_pb2.Summary.Value
        values = [value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
        self._write(step, values)
        super().write_scalars(step, scalars)

    def write_images(self, step: int, images: dict) -> None:
        """`images`: name -> [1, H, W, C] uint8."""
        from PIL import Image
        from tensorboard.compat.proto import summary_pb2

        values = []
        for name, picture in images.items():
            picture = np.asarray(picture)[0]
            buffer = io.BytesIO()
            Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture).save(
                buffer, "PNG"
            )
            encoded = summary_pb2.Summary.Image(
                height=picture.shape[0],
                width=picture.shape[1],
                colorspace=picture.shape[2],
                encoded_image_string=buffer.getvalue(),
            )
            values.append(summary_pb2.Summary.Value(tag=name, image=encoded))
        self._write(step, values)

    def write_hparams(self, hparams: dict) -> None:
        from tensorboard.plugins.hparams import summary_v2

        self._add(0, summary_v2.hparams_pb(hparams))

    def flush(self) -> None:
        self._events.flush()

    def close(self) -> None:
        self._events.close()


class Progress:
    """Writes `steps_per_sec` every `every_secs` seconds."""

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
    """Traces `num_steps` steps starting after step `first_step` with `jax.profiler`."""

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


def create(logdir: str, is_chief: bool):
    """The run's metric writer: TensorBoard events in `logdir` and the log (only the log on
    processes other than 0)."""
    return EventWriter(logdir) if is_chief else LoggingOnly()


def hooks(config, logdir: str, writer, is_chief: bool) -> list:
    """Per-step hooks: progress reports and, when `config.profile_steps`, a profiler window
    (process 0 only)."""
    result = [Progress(writer)]
    if config.profile_steps and is_chief:
        result.append(ProfileWindow(logdir, config.profile_first_step, config.profile_steps))
    return result
