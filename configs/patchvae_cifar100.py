"""PatchVAE pretraining on CIFAR-100 with the authors' settings (`model.kind=vae`: the baseline).

P = 16 parts of L = 6, ResNet-18 trunk to stride 8 (32 px -> 4×4 grid of 128 channels), ngf 64,
Adam (lr 1e-4, β1 0.5), batch 128, 30 "epochs" of 50,000 images = 11,700 steps, no augmentation.
The authors normalised with ImageNet statistics while decoding with tanh; here images are scaled
to [-1, 1], the tanh's range.

Needs TFDS `cifar100` (`python -m jvision.data.prepare --dataset=cifar100` on a machine with
internet). Command:
    python -m jvision.main --config=configs/patchvae_cifar100.py --workdir=workdirs/patchvae_cifar100
"""

import os

from jvision import config_files, config_lib

patchvae_mnist = config_files.load_config_module(
    os.path.join(os.path.dirname(__file__), "patchvae_mnist.py")
)


def get_config(arg: str | None = None):
    variant = config_lib.parse_arg(arg)
    config = patchvae_mnist.get_config()
    config.data.name = "cifar100"
    config.total_steps = 11_700
    config.batch_size = 128
    config.eval_every_steps = 390 * 5
    config.ckpt_every_steps = 390 * 5
    config.model.image_shape = (32, 32, 3)
    config.model.scale = 8
    config.model.num_parts = 16
    config.model.part_size = 6
    config.model.ngf = 64
    if variant == "tiny":
        config_lib.shrink_for_tests(config)
        config.model.ngf = 8
    return config
