"""PatchVAE pretraining on ImageNet with the authors' settings (`model.kind=vae`: the baseline).

P = 64 parts of L = 16, the whole ResNet-18 trunk (stride 32: 224 px -> 7×7 grid of 512
channels), ngf 64, Adam (lr 2e-4, β1 0.5), batch 256, 140 "epochs" of 50,000 images = 27,300
steps; images resized (shorter side 224), centre-cropped, mirrored at random.

Needs TFDS `imagenet2012` (manual download; `python -m jvision.data.prepare
--dataset=imagenet2012` with the archives in TFDS's manual_dir). Command:
    python -m jvision.main --config=configs/patchvae_imagenet.py --workdir=workdirs/patchvae_imagenet
"""

import os

from jvision import config_files, config_lib

patchvae_mnist = config_files.load_config_module(
    os.path.join(os.path.dirname(__file__), "patchvae_mnist.py")
)


def get_config(arg: str | None = None):
    variant = config_lib.parse_arg(arg)
    config = patchvae_mnist.get_config()
    config.data.name = "imagenet2012"
    config.data.eval_split = "validation"
    config.data.image_size = 224
    config.data.random_flip = True
    config.data.num_workers = 8
    config.total_steps = 27_300
    config.batch_size = 256
    config.eval_batch_size = 256
    config.eval_every_steps = 195 * 10
    config.ckpt_every_steps = 195 * 5
    config.optimizer.learning_rate = 2e-4
    config.model.image_shape = (224, 224, 3)
    config.model.scale = 32
    config.model.num_parts = 64
    config.model.part_size = 16
    config.model.ngf = 64
    config.evals.test.split = config.evals.nll.split = "validation"
    if variant == "tiny":
        config_lib.shrink_for_tests(config)
        config.data.num_workers = 0
        config.model.ngf = 8
    return config
