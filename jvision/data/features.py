"""What jvision's TFDS builders share: how they describe their examples to TFDS."""

import numpy as np
import tensorflow_datasets as tfds

DIGIT_SHAPE = (28, 28, 1)


def info(builder: tfds.core.DatasetBuilder, description: str, features: dict, **extra):
    """The `DatasetInfo` of one of jvision's builders: `features` is `{name: tfds feature}`;
    `extra` goes to `DatasetInfo` (e.g. `supervised_keys`, `license`)."""
    return tfds.core.DatasetInfo(
        builder=builder,
        description=description,
        features=tfds.features.FeaturesDict(features),
        **extra,
    )


def digits_info(builder: tfds.core.DatasetBuilder, description: str, **extra):
    """`info` of a dataset of MNIST digits: `image` [28, 28, 1] uint8 and `label` (10 classes),
    supervised as (image, label)."""
    features = {
        "image": tfds.features.Tensor(shape=DIGIT_SHAPE, dtype=np.uint8),
        "label": tfds.features.ClassLabel(num_classes=10),
    }
    return info(builder, description, features, supervised_keys=("image", "label"), **extra)
