"""SSD on generated MNIST scenes: the PhanHuyThong tutorial's detector and schedule (mAP 0.88).

Data: `mnist_detection`, 32×32 scenes of 1-4 digits made by the tutorial's generator: 16,000 train
scenes from the embedded MNIST's 4,000 train digits, 2,500 test scenes from its 1,000 test digits
(`--config.data.name=mnist_detection_full` builds them from full TFDS MNIST instead).
Model and training as the tutorial: base conv [1, 16, 32, 64] + aux [64, 64, 64], instance-normed
heads, 2,124 priors, MultiBoxLoss (IoU 0.5, 1 hard negative per positive, class weight 0.25),
Adam lr 1e-3 (biases 2e-3), coupled weight decay 5e-4, batch 20 in stored order (no shuffling),
100 epochs of 800 steps with the rate halved at epochs 40, 60 and 80. Evaluation: per-class NMS
(score > 0.2, IoU > 0.45) and VOC07 11-point AP at IoU > 0.5 over the 2,500 test scenes.

Fixed, not copied: the tutorial's boxes and priors disagree on which axis is x (it learned in a
transposed frame). Here both use (ymin, xmin, ymax, xmax); aspect ratios are height / width, which
keeps the priors' image-space shapes. Same maths, faster: each map's box and class convs are one
conv (initialised as the two), max-pooling is elementwise maxima.

Command:
    python -m jvision.main --config=configs/ssd_mnist.py --workdir=workdirs/ssd_mnist

Result: docs/results.md (SSD on the generated MNIST scenes), beside the tutorial's 0.8817;
`configs/ssd_mnist_short.py` is a 10-epoch schedule.
"""

from jvision import config_lib

STEPS_PER_EPOCH = 800  # 16,000 scenes / batch 20.


def get_config(arg: str | None = None):
    variant = config_lib.parse_arg(arg)
    config = config_lib.base_config()
    config.total_steps = 100 * STEPS_PER_EPOCH
    config.batch_size = 20
    config.eval_batch_size = 100
    config.log_every_steps = STEPS_PER_EPOCH
    config.eval_every_steps = 20 * STEPS_PER_EPOCH
    config.ckpt_every_steps = 10 * STEPS_PER_EPOCH
    config.num_summary_images = 16

    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.bias_lr_multiplier = 2.0
    config.optimizer.weight_decay = 5e-4
    config.optimizer.decay_steps = tuple(e * STEPS_PER_EPOCH for e in (40, 60, 80))
    config.optimizer.decay_factor = 0.5

    config.data.name = "mnist_detection"
    config.data.binarize = "none"
    config.data.shuffle = False  # The tutorial's train loader did not shuffle.

    config.model.name = "ssd"
    config.model.base_widths = (1, 16, 32, 64)
    config.model.aux_widths = (64, 64, 64)
    config.model.feature_sizes = (16, 8, 4, 2)
    config.model.prior_scales = (0.1, 0.36666667, 0.63333333, 0.9)  # linspace(0.1, 0.9, 4)
    config.model.aspect_ratios = (
        (1.0, 2.0, 4.0, 8.0, 0.5),
        (1.0, 2.0, 4.0, 6.0, 0.5, 1 / 3),
        (1.0, 2.0, 3.0, 5.0, 0.5, 1 / 3),
        (1.0, 2.0, 3.0, 5.0, 0.5, 1 / 3),
    )
    config.model.iou_threshold = 0.5
    config.model.negatives_per_positive = 1.0
    config.model.class_weight = 0.25
    config.model.score_threshold = 0.2
    config.model.nms_iou_threshold = 0.45
    config.model.max_detections_per_class = 25  # Per image; the tutorial had no cap.

    config.evals.test = dict(type="detection_map", split=config.data.eval_split)

    if variant == "tiny":
        config_lib.shrink_for_tests(config)
        config.data.name = "mnist_detection_tiny"  # The first scenes only, prepared in a second.
        config.optimizer.decay_steps = (2,)
    return config
