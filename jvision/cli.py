"""What jvision's commands share: flags, one config loader and one override parser, several
processes, one-line errors, and running the work so that bad input and early stops end the same
way everywhere.

Commands: `jvision.main` (train), `jvision.sweep` (seeds), `jvision.evaluate` (any workdir),
`jvision.data.prepare`. A config comes from `--config=FILE[:ARG]` (a Python file whose
`get_config(ARG)` returns it); `--config.KEY=VALUE` overrides any of its keys (for `evaluate`: of
the workdir's saved config), parsed as the type of the value it replaces; an unknown key gets the
closest known ones as suggestions.
"""

import glob
import os
import sys

from absl import flags

from jvision import config_checks, config_files, config_overrides, logs, models
from jvision.errors import UserError
from jvision.safety import failures, stops

_OVERRIDE = "--config."


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 1."""
    print(f"jvision: error: {message}", file=sys.stderr)
    sys.exit(1)


def split_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """`--config.KEY=VALUE` arguments taken out of `argv`: `(the rest, {KEY: VALUE})`."""
    rest, overrides = [], {}
    for arg in argv:
        if not arg.startswith(_OVERRIDE):
            rest.append(arg)
            continue
        key, equals, value = arg[len(_OVERRIDE) :].partition("=")
        if not equals or not key:
            fail(f"{arg}: write config overrides as --config.KEY=VALUE")
        overrides[key] = value
    return rest, overrides


def parse_flags(argv: list[str], required: tuple[str, ...] = ()) -> tuple[list[str], dict]:
    """absl's parsing with every mistake as one line and exit 1; `--config.KEY=VALUE` overrides
    are returned apart: `(the remaining arguments, overrides)`."""
    argv, overrides = split_overrides(argv)
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as error:
        fail(str(error).strip().splitlines()[-1].strip())
    for name in required:
        if flags.FLAGS[name].value is None:
            fail(f"--{name} is required")
        if not str(flags.FLAGS[name].value).strip():  # E.g. an unset $WORKDIR.
            fail(f"--{name} is empty; give a value")
    return rest, overrides


def parse_plain_flags(argv: list[str]) -> list[str]:
    """absl's parsing for commands without a config: a bad flag is one line and exit 1."""
    rest, overrides = parse_flags(argv)
    if overrides:
        fail("this command takes no --config.KEY=VALUE")
    return rest


class RunFlags:
    """`--config=FILE[:ARG]`, `--config.KEY=VALUE`, `--workdir` and the flags for several
    processes, for commands that train (`jvision.main`, `jvision.sweep`)."""

    def __init__(self, workdir_help: str):
        flags.DEFINE_string("config", None, "Config file, FILE or FILE:ARG (e.g. :tiny).")
        flags.DEFINE_string("workdir", None, workdir_help)
        flags.DEFINE_bool(
            "distributed",
            os.environ.get("JVISION_DISTRIBUTED") == "1",
            "Run as one of several processes: jax.distributed.initialize() detects Cloud TPU, "
            "Slurm and GKE by itself; default from JVISION_DISTRIBUTED=1.",
        )
        flags.DEFINE_string(
            "coordinator_address", None, "host:port of process 0 (elsewhere than TPU/Slurm/GKE)."
        )
        flags.DEFINE_integer("num_processes", None, "How many processes take part.")
        flags.DEFINE_integer("process_id", None, "This process's index, 0 first.")
        self.config = None

    def parse(self, argv: list[str]) -> list[str]:
        """The flags parser for `absl.app.run`: loads the config and applies the overrides."""
        rest, overrides = parse_flags(argv, required=("config", "workdir"))
        try:
            self.config = config_files.load(flags.FLAGS.config)
            config_overrides.apply_overrides(self.config, overrides)
            # What can be checked before the heavy imports is, so that bad input is refused in
            # a fraction of a second (the trainer checks it again, for library callers).
            config_checks.validate(self.config)
            models.check_name(self.config.model.name)
        except UserError as error:
            fail(str(error))
        return rest

    @property
    def workdir(self) -> str:
        return flags.FLAGS.workdir


def configure_logs() -> None:
    """jvision's lines on stderr, other libraries' warnings only (`jvision.logs`), unless the
    command line gives absl's `--verbosity`."""
    given = flags.FLAGS["verbosity"].present
    logs.configure(flags.FLAGS.verbosity if given else None)


def hide_tensorflow_from_accelerators() -> None:
    """TensorFlow (optional) is only used by TFDS and the TensorBoard writers: keep it quiet and
    off the GPUs, which belong to JAX. Without NVIDIA GPUs there is nothing to hide, and not
    importing it here saves seconds (bad input is refused before anything imports it)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # It runs no compute here; nor its notice.
    if not glob.glob("/dev/nvidia[0-9]*"):
        return
    try:
        import tensorflow as tf  # Only here: seconds to import, and optional.
    except ImportError:
        return
    tf.config.set_visible_devices([], "GPU")


def start(processes: bool = False) -> None:
    """What a command does once its flags are parsed, before its work: jvision's log lines
    (`configure_logs`), TensorFlow kept off the accelerators, and with `processes` the
    `jax.distributed` setup the flags ask for."""
    configure_logs()
    hide_tensorflow_from_accelerators()
    if processes:
        initialize_processes()


def initialize_processes() -> None:
    """`jax.distributed.initialize` as the flags ask (nothing for a single process)."""
    import jax  # Only here: bad input is refused before JAX's second of imports.

    names = ("coordinator_address", "num_processes", "process_id")
    explicit = tuple(flags.FLAGS[name].value for name in names)
    if any(value is not None for value in explicit):
        if any(value is None for value in explicit):
            fail("--coordinator_address, --num_processes and --process_id go together")
        jax.distributed.initialize(*explicit)
    elif flags.FLAGS.distributed:
        jax.distributed.initialize()  # Cloud TPU, Slurm, GKE: found from the environment.


def run(work) -> None:
    """Runs `work()`: a `UserError` becomes one line and exit 1, and so does a failing storage
    (full, read-only, forbidden); a run stopped by SIGTERM or Ctrl-C (after its checkpoint) one
    line and exit 75."""
    try:
        work()
    except UserError as error:
        fail(str(error))
    except stops.Stopped as stopped:
        print(f"jvision: {stopped}", file=sys.stderr)
        sys.exit(stops.EXIT_STATUS)
    except Exception as error:
        failure = failures.storage_failure(error)
        if failure is None:
            raise
        print(
            f"jvision: error: {failure}; fix the storage and rerun the same command "
            "(nothing complete is lost)",
            file=sys.stderr,
        )
        # The run closed its files and released its lock; what is left are a checkpointer's
        # background threads, which on the way out would print tracebacks of their own
        # ("cannot schedule new futures after interpreter shutdown"): leave without them.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
