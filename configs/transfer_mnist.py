"""Recognition transfer on the embedded MNIST: frozen PatchVAE / VAE / random encoder + MLP head.

The protocol of PatchVAE's classifier: the encoder of a pretraining workdir, frozen with its
BatchNorm statistics, and Dropout(0.5) → Dense 512 → ReLU → Dense 10 trained with SGD (momentum
0.9, weight decay 1e-4, rate ×0.1 at each step of `optimizer.decay_steps`). Reports `test/top1`.

The encoder comes from the pretraining run named by `init_from.workdir` (its `encoder` sub-tree,
copied before training; `model.scale` must be the pretraining's). Commands (pretrain, then
transfer; an empty `init_from.workdir` is the random-encoder floor):
    python -m jvision.main --config=configs/patchvae_mnist.py --workdir=workdirs/patchvae_mnist
    python -m jvision.main --config=configs/transfer_mnist.py --workdir=workdirs/transfer_patchvae \
        --config.init_from.workdir=workdirs/patchvae_mnist

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

    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.01
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 1e-4
    config.optimizer.decay_steps = (1500,)
    config.optimizer.decay_factor = 0.1

    config.init_from.workdir = ""  # A pretraining run; empty: a randomly initialised encoder.
    config.init_from.source = "encoder"

    config.model.name = "transfer"
    config.model.scale = 4  # The pretraining's (configs/patchvae_mnist.py).
    config.model.image_shape = (28, 28, 1)
    config.model.num_classes = 10
    config.model.freeze_stages = -1  # -1: the whole encoder.

    config.evals.test = dict(type="mean_metrics", split=config.data.eval_split)
    if variant == "tiny":
        config_lib.shrink_for_tests(config)
    return config
