"""The datasets jvision reads, by `data.name`: what each is and how its pixels are stored.

Imports nothing heavy, so that a command refuses an unknown name before TFDS loads
(`jvision.config_checks`). Opening a split is `jvision.data.sources`."""

import dataclasses

from jvision.errors import UserError


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    tfds_name: str
    pixel_max: int  # Stored value of a white pixel: images are scaled by 1 / pixel_max.
    splits: tuple[str, ...]
    # jvision's own builder ("module:Class" or "module:Class/config"), prepared on first use from
    # data already here; None for TFDS's catalogue datasets.
    builder: str | None = None
    # "module:function" mapping each stored example to the fields jvision reads; None: as stored.
    adapter: str | None = None


DATASETS = {
    "embedded_mnist": DatasetSpec(
        "embedded_mnist", 255, ("train", "test"), "jvision.data.embedded_mnist:EmbeddedMnist"
    ),
    "full_mnist": DatasetSpec(
        "full_mnist", 255, ("train", "validation", "test"), "jvision.data.full_mnist:FullMnist"
    ),
    "mnist": DatasetSpec("mnist", 255, ("train", "test")),
    "binarized_mnist": DatasetSpec("binarized_mnist", 1, ("train", "validation", "test")),
    "cifar100": DatasetSpec("cifar100", 255, ("train", "test")),
    "imagenet2012": DatasetSpec("imagenet2012", 255, ("train", "validation")),
    "kitti": DatasetSpec(
        "kitti", 255, ("train", "validation", "test"), adapter="jvision.data.kitti:to_detection"
    ),
    "mnist_detection": DatasetSpec(
        "mnist_detection",
        255,
        ("train", "test"),
        "jvision.data.mnist_detection:MnistDetection/embedded",
    ),
    "mnist_detection_tiny": DatasetSpec(
        "mnist_detection",
        255,
        ("train", "test"),
        "jvision.data.mnist_detection:MnistDetection/tiny",
    ),
    "mnist_detection_full": DatasetSpec(
        "mnist_detection",
        255,
        ("train", "test"),
        "jvision.data.mnist_detection:MnistDetection/full",
    ),
}


def spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise UserError(f"unknown data.name {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[name]
