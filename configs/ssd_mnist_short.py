"""SSD on MNIST scenes with a 10-epoch schedule: `ssd_mnist.py` shortened for a 2-core CPU.

Everything is `configs/ssd_mnist.py` (the tutorial's model, loss, optimizer and data, in one box
frame) except the schedule, which is not the tutorial's: 10 epochs of 800 steps instead of 100,
with the rate halved at epochs 4, 6 and 8 instead of 40, 60 and 80.

Command:
    python -m jvision.main --config=configs/ssd_mnist_short.py --workdir=workdirs/ssd_mnist_short

Result: docs/results.md (SSD on the generated MNIST scenes; full-MNIST scenes: "Full MNIST,
beside the papers").
"""

import os

from jvision import config_files, config_lib

ssd_mnist = config_files.load_config_module(os.path.join(os.path.dirname(__file__), "ssd_mnist.py"))

EPOCHS = 10


def get_config(arg: str | None = None):
    variant = config_lib.parse_arg(arg)
    config = ssd_mnist.get_config(arg)
    if variant == "tiny":
        return config
    steps = ssd_mnist.STEPS_PER_EPOCH
    config.total_steps = EPOCHS * steps
    config.eval_every_steps = 5 * steps
    config.ckpt_every_steps = 5 * steps
    config.optimizer.decay_steps = tuple(e * steps for e in (4, 6, 8))
    return config
