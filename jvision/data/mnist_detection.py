"""`mnist_detection`: 32×32 scenes of up to four MNIST digits with boxes, as the SSD tutorial made.

Generation follows the tutorial's notebook step by step: four slots at offsets {0, 25}², each filled
with probability 0.8 by the next digit of a shuffled pass over the source digits, resized to a
random 15-27 px per side (bicubic, OpenCV), cropped to its ink, jittered 0-4 px, moved back inside
the canvas when it would cross the border, its ink pasted over earlier digits; a scene with no digit
gets one at a random place. The tutorial's crop keeps rows/columns from the first to the last ink
pixel *exclusive*, so the last row and column of ink are cut off; that is kept.

Boxes are normalised `(ymin, xmin, ymax, xmax)` (pixel row/column divided by 32), padded to
MAX_OBJECTS rows with label -1. Configs:

- `embedded` (default): 16,000 train scenes from the embedded MNIST's 4,000 train digits and
  2,500 test scenes from its 1,000 held-out test digits; prepared offline.
- `full`: the same counts from full MNIST, offline (`full_mnist`: the 60,000 digits of its
  `train+validation` for train scenes, its 10,000 `test` digits for test scenes), as the
  tutorial's own data: scenes from all of MNIST's training and test digits.
- `tiny`: the first 400 train and 100 test scenes of `embedded` (the same generator and seeds),
  what the configs' `:tiny` runs read, prepared in about a second.
"""

import numpy as np
import tensorflow_datasets as tfds

from jvision.data import features, sources

CANVAS = 32
MAX_OBJECTS = 4
SLOT_OFFSETS = (0, 25)
FILL_PROBABILITY = 0.8
SCENES = {"train": 16_000, "test": 2_500}
TINY_SCENES = {"train": 400, "test": 100}
SEEDS = {"train": 0, "test": 1}


def crop_to_ink(digit: np.ndarray) -> np.ndarray:
    """The tutorial's crop: [first ink row, last ink row) × [first ink col, last ink col)."""
    rows = np.flatnonzero(digit.any(axis=1))
    cols = np.flatnonzero(digit.any(axis=0))
    return digit[rows.min() : rows.max(), cols.min() : cols.max()]


def generate_scenes(digits: np.ndarray, labels: np.ndarray, count: int, seed: int):
    """Makes `count` scenes from `digits` [N, 28, 28] uint8 with `labels` [N].

    Returns images [count, 32, 32] uint8, boxes [count, 4, 4] float32 (normalised corners),
    labels [count, 4] int64 (-1 pads) and the number of objects [count].
    """
    import cv2  # Only needed to prepare the dataset.

    rng = np.random.RandomState(seed)
    images = np.zeros((count, CANVAS, CANVAS), np.uint8)
    boxes = np.zeros((count, MAX_OBJECTS, 4), np.float32)
    classes = np.full((count, MAX_OBJECTS), -1, np.int64)
    num_objects = np.zeros(count, np.int64)
    cursor, order = 0, None

    def place(canvas, digit, top, left):
        height, width = digit.shape
        top = CANVAS - 1 - height if top + height >= CANVAS else top
        left = CANVAS - 1 - width if left + width >= CANVAS else left
        region = canvas[top : top + height, left : left + width]
        region[digit > 0] = digit[digit > 0]
        return [top, left, top + height, left + width]

    def next_digit():
        nonlocal cursor, order
        if cursor == 0:
            order = rng.permutation(len(digits))
        size = (rng.randint(15, 28), rng.randint(15, 28))  # cv2's dsize is (width, height).
        digit = crop_to_ink(
            cv2.resize(digits[order[cursor]], dsize=size, interpolation=cv2.INTER_CUBIC)
        )
        label = labels[order[cursor]]
        cursor = (cursor + 1) % len(digits)
        return digit, label

    for index in range(count):
        placed = []
        for row in SLOT_OFFSETS:
            for col in SLOT_OFFSETS:
                if rng.rand() <= FILL_PROBABILITY:
                    digit, label = next_digit()
                    top, left = row + rng.randint(0, 5), col + rng.randint(0, 5)
                    placed.append((place(images[index], digit, top, left), label))
        if not placed:
            digit, label = next_digit()
            top, left = rng.randint(0, CANVAS), rng.randint(0, CANVAS)
            placed.append((place(images[index], digit, top, left), label))
        num_objects[index] = len(placed)
        for slot, (box, label) in enumerate(placed):
            boxes[index, slot] = np.asarray(box, np.float32) / CANVAS
            classes[index, slot] = label
    return images, boxes, classes, num_objects


def source_digits(config_name: str, split: str, data_dir: str | None):
    """The digits scenes of `split` are made from: [N, 28, 28] uint8 and labels [N]."""
    if config_name in ("embedded", "tiny"):
        source = sources.open_source("embedded_mnist", split, data_dir)
    else:
        digits_split = {"train": "train+validation", "test": "test"}[split]
        source = sources.open_source("full_mnist", digits_split, data_dir)
    examples = [source[i] for i in range(len(source))]
    digits = np.stack([e["image"][..., 0] for e in examples])
    return digits, np.asarray([e["label"] for e in examples])


class MnistDetection(tfds.core.GeneratorBasedBuilder):
    """Scenes of up to four MNIST digits with boxes and labels."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="embedded", description="From the embedded MNIST digits."),
        tfds.core.BuilderConfig(name="full", description="From full_mnist (all of MNIST)."),
        tfds.core.BuilderConfig(name="tiny", description="embedded's first scenes, for :tiny."),
    ]

    def _scenes(self) -> dict[str, int]:
        return TINY_SCENES if self.builder_config.name == "tiny" else SCENES

    def _info(self) -> tfds.core.DatasetInfo:
        scene = {
            "image": tfds.features.Tensor(shape=(CANVAS, CANVAS, 1), dtype=np.uint8),
            "boxes": tfds.features.Tensor(shape=(MAX_OBJECTS, 4), dtype=np.float32),
            "labels": tfds.features.Tensor(shape=(MAX_OBJECTS,), dtype=np.int64),
            "num_objects": tfds.features.Tensor(shape=(), dtype=np.int64),
        }
        return features.info(self, __doc__, scene)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in self._scenes()}

    def _generate_examples(self, split):
        digits, labels = source_digits(self.builder_config.name, split, self._data_dir_root)
        images, boxes, classes, counts = generate_scenes(
            digits, labels, self._scenes()[split], SEEDS[split]
        )
        for index in range(len(images)):
            yield (
                index,
                {
                    "image": images[index][..., None],
                    "boxes": boxes[index],
                    "labels": classes[index],
                    "num_objects": counts[index],
                },
            )
