"""Recognition transfer on CIFAR-100: a frozen pretrained encoder + MLP head (the authors' protocol).

SGD (lr 0.1, momentum 0.9, weight decay 1e-4), batch 256, 90 epochs with the rate ×0.1 every 30
(the classifier script's defaults); reports `test/top1`.

Needs TFDS `cifar100`. Command (after configs/patchvae_cifar100.py):
    python -m jvision.main --config=configs/transfer_cifar100.py --workdir=workdirs/transfer_cifar100 \
        --config.init_from.workdir=workdirs/patchvae_cifar100
"""

import os

from jvision import config_files, config_lib

transfer_mnist = config_files.load_config_module(
    os.path.join(os.path.dirname(__file__), "transfer_mnist.py")
)
STEPS_PER_EPOCH = 50_000 // 256


def get_config(arg: str | None = None):
    variant = config_lib.parse_arg(arg)
    config = transfer_mnist.get_config()
    config.data.name = "cifar100"
    config.batch_size = 256
    config.total_steps = 90 * STEPS_PER_EPOCH
    config.eval_every_steps = 10 * STEPS_PER_EPOCH
    config.ckpt_every_steps = 10 * STEPS_PER_EPOCH
    config.optimizer.learning_rate = 0.1
    config.optimizer.decay_steps = (30 * STEPS_PER_EPOCH, 60 * STEPS_PER_EPOCH)
    config.model.image_shape = (32, 32, 3)
    config.model.scale = 8
    config.model.num_classes = 100
    if variant == "tiny":
        config_lib.shrink_for_tests(config)
    return config
