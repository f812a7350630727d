"""Recognition transfer on ImageNet: a frozen pretrained encoder + MLP head (the authors' protocol).

SGD (lr 0.1, momentum 0.9, weight decay 1e-4), batch 256, 30 epochs with the rate ×0.1 after 30
(the authors' README command: no decay inside the run); reports `test/top1` on the validation set.
The head sees the flattened 7×7×512 map (the authors' `--arch` typo instead pooled it globally).

Needs TFDS `imagenet2012`. Command (after configs/patchvae_imagenet.py):
    python -m jvision.main --config=configs/transfer_imagenet.py --workdir=workdirs/transfer_imagenet \
        --config.init_from.workdir=workdirs/patchvae_imagenet
"""

import os

from jvision import config_files, config_lib

transfer_mnist = config_files.load_config_module(
    os.path.join(os.path.dirname(__file__), "transfer_mnist.py")
)
STEPS_PER_EPOCH = 1_281_167 // 256


def get_config(arg: str | None = None):
    variant = config_lib.parse_arg(arg)
    config = transfer_mnist.get_config()
    config.data.name = "imagenet2012"
    config.data.eval_split = "validation"
    config.data.image_size = 224
    config.data.random_flip = True
    config.data.num_workers = 8
    config.batch_size = 256
    config.eval_batch_size = 256
    config.total_steps = 30 * STEPS_PER_EPOCH
    config.eval_every_steps = 5 * STEPS_PER_EPOCH
    config.ckpt_every_steps = STEPS_PER_EPOCH
    config.optimizer.learning_rate = 0.1
    config.optimizer.decay_steps = ()
    config.model.image_shape = (224, 224, 3)
    config.model.scale = 32
    config.model.num_classes = 1000
    config.evals.test.split = "validation"
    if variant == "tiny":
        config_lib.shrink_for_tests(config)
        config.data.num_workers = 0
    return config
