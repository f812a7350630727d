"""Command line: `python -m jvision.main --config=configs/vae_mnist.py --workdir=DIR`.

`--config.KEY=VALUE` overrides any config key; `--config=FILE:tiny` selects a config's tiny variant.
Bad input ends with one line on stderr and exit status 1. The work is in `jvision.train`.
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
    "Call jax.distributed.initialize() (multi-host TPU/Slurm); default from JVISION_DISTRIBUTED.",
)


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

    if _DISTRIBUTED.value:
        jax.distributed.initialize()

    from jvision import train
    from jvision.errors import UserError

    try:
        train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except UserError as error:
        fail(str(error))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
