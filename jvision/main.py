"""Command line: `python -m jvision.main --config=configs/vae_mnist.py --workdir=DIR`.

`--config.KEY=VALUE` overrides any config key; `--config=FILE:tiny` selects a config's tiny variant.
Bad input ends with one line on stderr and exit status 1; a run stopped by SIGTERM or Ctrl-C saves
a checkpoint, says so in one line and exits with status 75 (rerun to resume). Several processes:
`--distributed` (Cloud TPU, Slurm, GKE) or the three flags `--coordinator_address`,
`--num_processes`, `--process_id`. The work is in `jvision.train`.
"""

import os
import re
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    os.environ.get("JVISION_DISTRIBUTED") == "1",
    "Run as one of several processes: jax.distributed.initialize() detects Cloud TPU, Slurm and "
    "GKE by itself; default from JVISION_DISTRIBUTED=1.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (elsewhere than TPU/Slurm/GKE)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "How many processes take part.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0 first.")


def fail(message: str) -> None:
    print(f"jvision: error: {message}", file=sys.stderr)
    sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
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
        _CONFIG.value.get("model")  # The config file is loaded lazily: load it now.
    except OSError as error:
        fail(f"cannot load the config file: {str(error).strip().splitlines()[-1].strip()}")
    return rest


def main(argv: list[str]) -> None:
    del argv
    # TensorFlow is only used by TFDS and the TensorBoard writers: keep it quiet and off the
    # accelerators.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    import jax

    explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if any(value is not None for value in explicit):
        if any(value is None for value in explicit):
            fail("--coordinator_address, --num_processes and --process_id go together")
        jax.distributed.initialize(*explicit)
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()  # Cloud TPU, Slurm, GKE: found from the environment.

    from jvision import preemption, train
    from jvision.errors import UserError

    try:
        train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except UserError as error:
        fail(str(error))
    except preemption.Stopped as stopped:
        print(f"jvision: {stopped}", file=sys.stderr)
        sys.exit(preemption.EXIT_STATUS)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
