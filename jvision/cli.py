"""What jvision's commands share: flags for a config and a workdir, several processes, one-line
errors, and running the work so that bad input and early stops end the same way everywhere.

Commands: `jvision.main` (train), `jvision.sweep` (seeds), `jvision.evaluate` (any workdir).
"""

import glob
import os
import re
import sys

from absl import flags
from ml_collections import config_flags


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 1."""
    print(f"jvision: error: {message}", file=sys.stderr)
    sys.exit(1)


def define_run_flags(workdir_help: str):
    """`--config` (a config file, `:ARG`, `--config.KEY=VALUE`), `--workdir` and the flags for
    several processes. Returns the config flag's holder."""
    config = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
    flags.DEFINE_string("workdir", None, workdir_help)
    flags.DEFINE_bool(
        "distributed",
        os.environ.get("JVISION_DISTRIBUTED") == "1",
        "Run as one of several processes: jax.distributed.initialize() detects Cloud TPU, Slurm "
        "and GKE by itself; default from JVISION_DISTRIBUTED=1.",
    )
    flags.DEFINE_string(
        "coordinator_address", None, "host:port of process 0 (elsewhere than TPU/Slurm/GKE)."
    )
    flags.DEFINE_integer("num_processes", None, "How many processes take part.")
    flags.DEFINE_integer("process_id", None, "This process's index, 0 first.")
    return config


def parse_run_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with every mistake (unknown flag or config key, a config file that fails
    to load, a missing --config or --workdir) as one line and exit status 1."""
    try:
        rest = flags.FLAGS(argv)
    except AttributeError as error:  # ml_collections: an override names a key the config lacks.
        key = re.findall(r"\w+", str(error))[-1]
        fail(f"unknown config key {key!r} in a --config.KEY=VALUE override; see the config file")
    except Exception as error:  # Bad flag, or a config file that fails to run.
        fail(str(error).strip().splitlines()[-1].strip())
    for name in ("config", "workdir"):
        if flags.FLAGS[name].value is None:
            fail(f"--{name} is required")
    try:
        flags.FLAGS["config"].value.get("model")  # The config file is loaded lazily: load it now.
    except OSError as error:
        fail(f"cannot load the config file: {str(error).strip().splitlines()[-1].strip()}")
    return rest


def parse_plain_flags(argv: list[str]) -> list[str]:
    """absl's parsing for commands without a config: a bad flag is one line and exit 1."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        fail(str(error).strip().splitlines()[-1].strip())


def hide_tensorflow_from_accelerators() -> None:
    """TensorFlow (optional) is only used by TFDS and the TensorBoard writers: keep it quiet and
    off the GPUs, which belong to JAX. Without NVIDIA GPUs there is nothing to hide, and not
    importing it here saves seconds (bad input is refused before anything imports it)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not glob.glob("/dev/nvidia[0-9]*"):
        return
    try:
        import tensorflow as tf
    except ImportError:
        return
    tf.config.set_visible_devices([], "GPU")


def initialize_processes() -> None:
    """`jax.distributed.initialize` as the flags ask (nothing for a single process)."""
    import jax

    names = ("coordinator_address", "num_processes", "process_id")
    explicit = tuple(flags.FLAGS[name].value for name in names)
    if any(value is not None for value in explicit):
        if any(value is None for value in explicit):
            fail("--coordinator_address, --num_processes and --process_id go together")
        jax.distributed.initialize(*explicit)
    elif flags.FLAGS.distributed:
        jax.distributed.initialize()  # Cloud TPU, Slurm, GKE: found from the environment.


def run(work) -> None:
    """Runs `work()`: a `UserError` becomes one line and exit 1; a run stopped by SIGTERM or
    Ctrl-C (after its checkpoint) one line and exit 75."""
    from jvision import preemption
    from jvision.errors import UserError

    try:
        work()
    except UserError as error:
        fail(str(error))
    except preemption.Stopped as stopped:
        print(f"jvision: {stopped}", file=sys.stderr)
        sys.exit(preemption.EXIT_STATUS)
