"""VOC07 11-point AP on cases small enough to compute by hand."""

import numpy as np

from jvision.ops.detection_metrics import voc07_average_precision

BOX = np.array([0.1, 0.1, 0.5, 0.5])
OTHER = np.array([0.6, 0.6, 0.9, 0.9])


def gt(*boxes_labels):
    return {
        "boxes": np.array([b for b, _ in boxes_labels]).reshape(-1, 4),
        "labels": np.array([label for _, label in boxes_labels], int),
    }


def det(*entries):
    return {
        "boxes": np.array([b for b, _, _ in entries]).reshape(-1, 4),
        "scores": np.array([s for _, s, _ in entries], float),
        "labels": np.array([label for _, _, label in entries], int),
    }


def ap(detections, truths, num_classes=2):
    return voc07_average_precision(detections, truths, num_classes)


def test_perfect_detection_is_one():
    np.testing.assert_allclose(ap([det((BOX, 0.9, 0))], [gt((BOX, 0))])[0], 1.0)


def test_false_positive_ranked_first_halves_precision():
    # FP (score 0.9, wrong place) then TP (0.8): precision 0.5 at recall 1 for every point.
    result = ap([det((OTHER, 0.9, 0), (BOX, 0.8, 0))], [gt((BOX, 0))])
    np.testing.assert_allclose(result[0], 0.5)
    # A trailing false positive does not lower any interpolated precision.
    result = ap([det((BOX, 0.9, 0), (OTHER, 0.8, 0))], [gt((BOX, 0))])
    np.testing.assert_allclose(result[0], 1.0)


def test_duplicates_are_false_positives():
    # Two detections of one object, then a second object found: hits 1, 1, 2 of 3 detections.
    images = [det((BOX, 0.9, 0), (BOX, 0.8, 0)), det((OTHER, 0.7, 0))]
    truths = [gt((BOX, 0)), gt((OTHER, 0))]
    # recall 0.5 at precision 1, recall 1 at precision 2/3: points 0..0.5 -> 1, 0.6..1 -> 2/3.
    np.testing.assert_allclose(ap(images, truths)[0], (6 * 1 + 5 * 2 / 3) / 11)


def test_misses_cap_recall():
    images = [det((BOX, 0.9, 0)), det()]
    truths = [gt((BOX, 0)), gt((OTHER, 0))]
    np.testing.assert_allclose(ap(images, truths)[0], 6 / 11)  # Recall 0.5 at most.


def test_iou_must_exceed_half_and_classes_are_separate():
    half = np.array([0.1, 0.1, 0.5, 0.3])  # IoU exactly 0.5 with BOX: not a hit.
    result = ap([det((half, 0.9, 0), (BOX, 0.9, 1))], [gt((BOX, 0), (BOX, 1))])
    np.testing.assert_allclose(result, [0.0, 1.0])
