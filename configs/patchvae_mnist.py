"""PatchVAE pretraining on the embedded MNIST, offline on a CPU (the recognition protocol's
pretraining stage; `--config.model.kind=vae` trains the matched β-VAE baseline).

Model: ResNet-18 trunk truncated at stride 4 (28×28 digits -> a 7×7 grid of 64 channels), P = 8
parts of L = 4 appearance dims (the baseline: one 32-dim Gaussian), pyramid decoder with ngf 32,
β_app = 1, β_occ = 10, occurrence prior 1/P, temperature 1 → 0.1 on the authors' schedule,
Adam (lr 1e-4, β1 0.5). The paper's sizes are in `configs/patchvae_cifar100.py` and
`configs/patchvae_imagenet.py`; these are shrunk for 28×28 grayscale digits and a 2-core CPU.

Command:
    python -m jvision.main --config=configs/patchvae_mnist.py --workdir=workdirs/patchvae_mnist

Results: docs/results.md ("PatchVAE vs VAE vs random init, with seeds"; full MNIST: "PatchVAE vs
VAE vs a random encoder, transfer on full MNIST").
"""

from jvision import config_lib


def get_config(arg: str | None = None):
    variant = config_lib.parse_arg(arg)
    config = config_lib.base_config()
    config.total_steps = 2000
    config.batch_size = 64
    config.eval_batch_size = 200
    config.log_every_steps = 100
    config.eval_every_steps = 1000
    config.ckpt_every_steps = 1000
    config.data.binarize = "none"

    config.optimizer.learning_rate = 1e-4
    config.optimizer.b1 = 0.5

    config.model.name = "patchvae"
    config.model.kind = "patchvae"  # Or "vae": the global-latent baseline.
    config.model.image_shape = (28, 28, 1)
    config.model.scale = 4
    config.model.num_parts = 8
    config.model.part_size = 4
    config.model.ngf = 32
    config.model.beta_appearance = 1.0
    config.model.beta_occurrence = 10.0
    config.model.occurrence_prior = 0.0  # 0: 1 / num_parts.
    config.model.initial_temperature = 1.0
    config.model.anneal = 3e-5
    config.model.min_temperature = 0.1
    config.model.hard = False
    config.model.edge_weighted = False

    config.evals.test = dict(type="mean_metrics", split=config.data.eval_split)
    # test/nll_is_nats at the end: K = 200 samples per test digit (~25 s here).
    config_lib.importance_sampled_nll(config, num_samples=200, samples_per_pass=50, batch_size=16)
    if variant == "tiny":
        config_lib.shrink_for_tests(config)
        config.model.ngf = 8
    return config
