"""The TF-free TensorBoard writer on a local disk (in a bucket: tests/test_cloud_storage.py)."""

import os

import numpy as np

from jvision import writers
from jvision.safety import events


def test_local_event_files_are_appended_to_and_read_whole_by_tensorboard(tmp_path):
    """On disk the file grows in place (TensorBoard keeps reading a file it has open): each
    flush appends what was written since, and nothing reaches the disk between flushes."""
    from tensorboard.backend.event_processing import event_accumulator

    writer = writers.TensorBoardWriter(str(tmp_path))
    (file,) = tmp_path.iterdir()
    inode, started = file.stat().st_ino, file.read_bytes()
    for step in range(1, 6):
        writer.write_scalars(step, {"train/loss": float(step)})
    assert file.read_bytes() == started  # Pending until the flush (flush_secs: a minute).
    writer.flush()
    writer.write_images(5, {"samples": np.full((1, 4, 4, 1), 7, np.uint8)})
    writer.close()
    assert file.stat().st_ino == inode and file.read_bytes().startswith(started)
    assert os.listdir(tmp_path) == [file.name]
    events = event_accumulator.EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (step, float(step)) for step in range(1, 6)
    ]
    assert events.Tags()["images"] == ["samples"]


def test_records_are_flushed_once_flush_secs_have_passed(tmp_path):
    from tensorboard.compat.proto import event_pb2

    event_file = events.EventFile(str(tmp_path), flush_secs=0)
    size = event_file.file.stat().length
    event_file.add_event(event_pb2.Event(step=1))
    assert event_file.file.stat().length > size  # Written at once.
    event_file.close()
