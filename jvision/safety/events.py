"""TensorBoard event files written without TensorFlow, never appended to in a bucket.

TensorBoard's own TensorFlow-free writer appends to its file, which gcsfs turns into an overwrite
(each file then kept its last record); `EventFile` rewrites a bucket's file whole at each flush
and starts a new one past a size, so no record is lost and no flush rewrites much.
"""

import io
import os
import socket
import time

from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from jvision.safety import files


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
        self.folder = files.path(logdir)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.flush_secs, self.max_bytes = flush_secs, max_bytes
        self._rewrite = files.is_uri(self.folder)
        self._stamp = 0
        self._last_flush = time.monotonic()
        self._next_file()
        self.flush()  # The run shows in TensorBoard from its start.

    def _next_file(self) -> None:
        """Starts the next event file (its name sorts after the previous one's), its first record
        the file version, pending."""
        self._stamp = max(int(time.time()), self._stamp + 1)
        name = f"events.out.tfevents.{self._stamp:010d}.{socket.gethostname()}.{os.getpid()}.0"
        self.file = self.folder / name
        self._flushed = bytearray()  # What the file holds, where it is rewritten whole.
        self._size = 0  # The file's length.
        self._pending = io.BytesIO()
        self._frame(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _frame(self, event) -> None:
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
        with files.naming(self.file):
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
