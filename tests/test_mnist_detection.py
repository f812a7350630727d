"""The tutorial's scene generator: invariants of boxes, ink and counts."""

import numpy as np

from jvision.data import embedded_mnist, mnist_detection


def _scenes(count=300, seed=0):
    digits, labels = embedded_mnist.load_digits()
    return mnist_detection.generate_scenes(digits[:200, ..., 0], labels[:200], count, seed)


def test_scene_invariants():
    images, boxes, labels, counts = _scenes()
    assert images.shape == (300, 32, 32) and boxes.shape == (300, 4, 4)
    assert counts.min() >= 1 and counts.max() <= 4
    np.testing.assert_array_equal((labels >= 0).sum(1), counts)
    assert set(np.unique(labels[labels >= 0])) <= set(range(10))
    pixel_boxes = boxes * 32
    for image, box_set, count in zip(images, pixel_boxes, counts, strict=True):
        covered = np.zeros((32, 32), bool)
        for ymin, xmin, ymax, xmax in box_set[:count]:
            assert 0 <= ymin < ymax <= 31 and 0 <= xmin < xmax <= 31  # Inside the canvas.
            assert 3 <= ymax - ymin <= 27 and 1 <= xmax - xmin <= 27
            covered[int(ymin) : int(ymax), int(xmin) : int(xmax)] = True
        assert not (image > 0)[~covered].any()  # Every ink pixel lies in some digit's box.
        assert (image > 0).any()
    # About 80% of slots filled: 3.2 objects per scene on average.
    assert 2.9 < counts.mean() < 3.5


def test_generation_is_deterministic_for_a_seed():
    first, second, third = _scenes(50, 3), _scenes(50, 3), _scenes(50, 4)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], third[0])


def test_fewer_scenes_are_the_first_scenes():
    """What makes `mnist_detection_tiny` (the `:tiny` runs' data) the first scenes of
    `mnist_detection`: the generator draws scene after scene from one stream."""
    few, many = _scenes(40, 0), _scenes(250, 0)  # 250 scenes cycle through the 200 digits.
    for a, b in zip(few, many, strict=True):
        np.testing.assert_array_equal(a, b[:40])


def test_crop_to_ink_drops_the_last_ink_row_and_column_as_the_tutorial():
    digit = np.zeros((10, 10), np.uint8)
    digit[2:6, 3:8] = 9  # Ink rows 2..5, columns 3..7.
    assert mnist_detection.crop_to_ink(digit).shape == (3, 4)
