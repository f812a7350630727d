"""DRAW, the paper's model (`draw_mnist.py`) with `draw_mnist_clip.py`'s gradient clipping, on
full MNIST, beside the paper's Table 2 (≤ 80.97 nats with attention, ≤ 87.40 without).

Command:
    python -m jvision.main --config=configs/draw_full_mnist.py --workdir=workdirs/draw_full_mnist
Without attention: add `--config.model.use_attention=False` (another --workdir).

Data: `full_mnist` (`python -m jvision.data.prepare --dataset=full_mnist`): its 50,000 `train`
digits, dynamically binarized (the paper used one fixed binarization of the same 50,000 / 10,000 /
10,000 split, which TFDS calls `binarized_mnist` and which needs internet:
`--config.data.name=binarized_mnist --config.data.binarize=none`); the 10,000 test digits,
binarized once (fixed seed). Reports `test/nelbo_nats` (the paper's bound) on all 10,000 and
`test/nll_is_nats` with K = 1,000 importance samples on the first 1,000 test digits.

The schedule (300,000 steps of 64, 384 passes over the data) is what the paper's regime needs, not
what a CPU session finishes: the run is resumable; the README reports where it stood and its curve.

Result: docs/results.md (Full MNIST, beside the papers).
"""

import os

from jvision import config_files, config_lib

draw_mnist_clip = config_files.load_config_module(
    os.path.join(os.path.dirname(__file__), "draw_mnist_clip.py")
)


def get_config(arg: str | None = None):
    config = draw_mnist_clip.get_config(arg)
    config.data.name = "full_mnist"
    if config_lib.parse_arg(arg) != "tiny":
        config.total_steps = 300_000
        config.log_every_steps = 500
        config.eval_every_steps = 5000
        config.ckpt_every_steps = 1000
        config.keep_checkpoints = 2
        config.evals.test.split = "test"
        config_lib.importance_sampled_nll(
            config, num_samples=1000, samples_per_pass=50, batch_size=8
        )
        config.evals.nll.split = "test[:1000]"
    return config
