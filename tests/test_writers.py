"""The TF-free TensorBoard writer on a local disk (in a bucket: tests/test_cloud_storage.py)."""

import json
import os

import numpy as np
import pytest

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


def _wandb_records(path):
    """The records of a W&B run file (`run-<id>.wandb`): a LevelDB-style log after a 7-byte
    header, in blocks of 32 KiB, each record a 7-byte header (checksum, length, kind: 1 whole,
    2 first part, 3 middle, 4 last) and its bytes."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # Too little room for a header: the block is padded.
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0:
            position += left
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def test_wandb_offline_holds_every_scalar_the_run_logged(tmp_path):
    """`writers=("tensorboard", "wandb")` with `WANDB_MODE=offline`: the W&B run directory holds
    every scalar TensorBoard got, at the same steps, the pictures, and the run's config; W&B's
    own console lines stay out of the terminal."""
    pytest.importorskip("wandb")
    from helpers import run_main
    from tensorboard.backend.event_processing import event_accumulator

    env = dict(os.environ, WANDB_MODE="offline", WANDB_PROJECT="jvision-tests")
    result = run_main(
        "--config=configs/vae_mnist.py:tiny",
        f"--workdir={tmp_path}",
        "--config.writers=('tensorboard','wandb')",
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not [line for line in result.stderr.splitlines() if line.startswith("wandb:")]
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    logged, pictures, config = {}, set(), {}
    for record in _wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config = {item.key: json.loads(item.value_json) for item in record.run.config.update}
        if kind != "history":
            continue
        items = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
        step = int(items["_step"])
        for key, value in items.items():
            if key.endswith("/_type") and "image" in value:
                pictures.add(key.rsplit("/", 1)[0])
            if key.startswith(("train/", "test/")) and key.count("/") == 1:
                logged[key, step] = float(value)
    events = event_accumulator.EventAccumulator(str(tmp_path))
    events.Reload()
    expected = {
        (tag, event.step): event.value
        for tag in events.Tags()["scalars"]
        if tag.startswith(("train/", "test/"))
        for event in events.Scalars(tag)
    }
    assert logged.keys() == expected.keys() and len(expected) > 10
    for key, value in expected.items():  # TensorBoard keeps float32; W&B the float64.
        assert np.float32(logged[key]) == value, key
    assert pictures == {"reconstructions", "samples"}
    assert config["model"]["name"] == "vae" and config["writers"] == ["tensorboard", "wandb"]


def test_wandb_without_its_package_is_one_line_before_training(monkeypatch):
    import importlib.util

    from helpers import load_config

    from jvision import config_checks
    from jvision.errors import UserError

    config = load_config("vae_mnist", "tiny")
    config.writers = ("tensorboard", "wandb")
    real = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "wandb" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(UserError, match="pip install 'jvision\\[wandb\\]'"):
        config_checks.validate(config)
