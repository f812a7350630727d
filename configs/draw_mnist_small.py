"""DRAW, the smaller pytlib-sized model: 10 glimpses, 5×5 read and write, 128 units, z of 10.

pytlib's sizes with the paper's maths: LSTMs (pytlib: bias-free tanh RNNs), separate read/write
attention from the decoder state (pytlib: one shared head, write from the decoder output, γ/δ
swapped), float constants and a centred grid, summed-nats loss on binarized digits (pytlib: a
per-pixel mean with the KL divided by T, on grayscale augmented digits).

Command:
    python -m jvision.main --config=configs/draw_mnist_small.py --workdir=workdirs/draw_mnist_small

Result: docs/results.md (the quick start); step times: docs/speed.md.
"""

import os

from jvision import config_files, config_lib

draw_mnist = config_files.load_config_module(
    os.path.join(os.path.dirname(__file__), "draw_mnist.py")
)


def get_config(arg: str | None = None):
    variant = config_lib.parse_arg(arg)
    config = draw_mnist.get_config()
    config.total_steps = 5000
    config.batch_size = 32  # pytlib's README commands use -b 32.
    config.model.num_glimpses = 10
    config.model.hidden_size = 128
    config.model.latent_size = 10
    config.model.read_size = 5
    config.model.write_size = 5
    if variant == "tiny":
        draw_mnist.shrink_for_tests(config)
    return config
