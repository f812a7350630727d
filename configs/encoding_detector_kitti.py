"""pytlib's encoding detector on KITTI Cars, with pytlib's sizes (needs TFDS `kitti` prepared).

pytlib's triplet configuration: exemplar 127 px, search 255 px (a car's box ×2), the VAE's conv
stack (3×3, no padding, strides 2,1,2,2,1, widths 16-256: 12² exemplar maps, 28² search maps, 17²
responses), latent 128, Adam 1e-4. One class (Car); frames are resized to 375×1242
(`jvision/data/kitti.py`); the class exemplar is the mean map of every training car, correlated
over whole validation frames (FFT: pytlib's point for large images), scored by VOC07 AP at IoU
0.5. Differences from pytlib as in configs/encoding_detector_mnist.py (targets on window centres,
square exemplar windows, one feature map for both branches, adjusted responses).

Prepare the data on a machine with internet (`python -m jvision.data.prepare --dataset=kitti`),
then:
    python -m jvision.main --config=configs/encoding_detector_kitti.py --workdir=workdirs/encoding_detector_kitti
Not run here: this project's machines have no copy of KITTI (the tests run it on mocked TFDS).
"""

import os

from jvision import config_files, config_lib

mnist = config_files.load_config_module(
    os.path.join(os.path.dirname(__file__), "encoding_detector_mnist.py")
)


def get_config(arg: str | None = None):
    variant = config_lib.parse_arg(arg)
    config = mnist.get_config()
    config.total_steps = 50_000
    config.batch_size = 16
    config.eval_batch_size = 16
    config.num_summary_images = 4
    config.eval_every_steps = 10_000
    config.ckpt_every_steps = 5_000
    config.optimizer.learning_rate = 1e-4  # pytlib's.
    config.data.name = "kitti"
    config.data.eval_split = "validation"
    config.evals.test = dict(type="detection_map", split="validation", num_classes=1)
    config.model.channels = 3
    config.model.num_classes = 1
    config.model.exemplar_size = 127
    config.model.search_size = 255
    config.model.strides = (2, 1, 2, 2, 1)
    config.model.widths = (16, 32, 64, 128, 256)
    config.model.latent_size = 128
    config.model.window_px = 0  # pytlib's: every car normalised to the exemplar's size.
    config.model.max_detections_per_class = 20
    if variant == "tiny":
        config_lib.shrink_for_tests(config)
        config.data.eval_split = config.evals.test.split = "validation[:8]"
        config.data.train_split = "train[:8]"  # Also the calibration's scenes.
        config.num_summary_images = 2
        config.model.widths = (4, 4, 4, 4, 4)
        config.model.latent_size = 4
    return config
