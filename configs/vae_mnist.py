"""Convolutional VAE on MNIST with a Bernoulli likelihood (test negative ELBO in nats per image).

Command (the README's quick start):
    python -m jvision.main --config=configs/vae_mnist.py --workdir=workdirs/vae_mnist

Data: the embedded MNIST (4,000 train / 1,000 test digits), dynamically binarized. Reports
`test/nelbo_nats` and, at the end, `test/nll_is_nats` (K = 500 importance samples per test digit).

Result: the README's table ("Two commands"), per CPU kind measured (float32 rounds differently on
each CPU, so the digits after the first decimal differ between them).
"""

from jvision import config_lib


def get_config(arg: str | None = None):
    variant = config_lib.parse_arg(arg)
    config = config_lib.base_config()
    config.total_steps = 8000
    config.batch_size = 64
    config.eval_batch_size = 200
    config.log_every_steps = 200
    config.eval_every_steps = 1000
    config.ckpt_every_steps = 1000
    config.optimizer.learning_rate = 1e-3

    config.model.name = "vae"
    config.model.image_shape = (28, 28, 1)
    config.model.latent_dim = 32
    config.model.widths = (16, 32, 64)  # pytlib conv-stack widths.
    config.model.strides = (2, 1, 2)

    config.evals.test = dict(type="mean_metrics", split=config.data.eval_split)
    # test/nll_is_nats at the end: K = 500 importance samples per test digit (~75 s here).
    config_lib.importance_sampled_nll(config, num_samples=500, samples_per_pass=100, batch_size=16)

    if variant == "tiny":
        config_lib.shrink_for_tests(config)
        config.model.latent_dim = 4
        config.model.widths = (8, 8, 8)
    return config
