"""COCO's metrics (`jvision.ops.coco_metrics`): equal to pycocotools' own pipeline run on the same
detections, and known answers on hand-made cases."""

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jvision.ops import coco_metrics

SIZE = (32, 40)  # Height, width in pixels.


def _padded(boxes, labels, scores=None, slots=6):
    """One image's detections (with `scores`) or ground truth, padded as jvision pads them."""
    count = len(labels)
    padded_boxes = np.zeros((1, slots, 4))
    padded_boxes[0, :count] = np.reshape(boxes, (-1, 4))
    padded_labels = np.full((1, slots), -1)
    padded_labels[0, :count] = labels
    if scores is None:
        return {"boxes": padded_boxes, "labels": padded_labels}
    padded_scores = np.zeros((1, slots))
    padded_scores[0, :count] = scores
    valid = np.zeros((1, slots), bool)
    valid[0, :count] = True
    return {"boxes": padded_boxes, "labels": padded_labels, "scores": padded_scores, "valid": valid}


def _box(y, x, height, width):
    """A box in pixels -> normalised (ymin, xmin, ymax, xmax)."""
    return [y / SIZE[0], x / SIZE[1], (y + height) / SIZE[0], (x + width) / SIZE[1]]


def test_perfect_detections_score_one():
    boxes = [_box(2, 3, 10, 8), _box(15, 20, 12, 6)]
    truth = _padded(boxes, [1, 4])
    scores = coco_metrics.score(_padded(boxes, [1, 4], [0.9, 0.8]), truth, SIZE)
    for name in ("coco_AP", "coco_AP50", "coco_AP75", "coco_AP_small", "coco_AR1", "coco_AR100"):
        assert scores[name] == pytest.approx(1.0), name
    # Every object is under 32² pixels: no medium or large object, COCO's -1.
    assert scores["coco_AP_medium"] == scores["coco_AP_large"] == -1.0


@pytest.mark.parametrize("iou, expected_ap", [(0.62, 0.3), (0.78, 0.6), (0.93, 0.9)])
def test_a_box_at_a_known_iou_counts_at_the_thresholds_below_it(iou, expected_ap):
    """A 10×10 box shifted by d pixels sideways overlaps its object by (10 − d) / (10 + d): it is
    a hit at every IoU threshold 0.50, 0.55, … at or below that, a miss above, so AP over the
    ten thresholds is the fraction of hits (one object, one detection: precision 1 when hit)."""
    shift = 10 * (1 - iou) / (1 + iou)
    truth = _padded([_box(5, 5, 10, 10)], [2])
    detected = _padded([_box(5, 5 + shift, 10, 10)], [2], [0.7])
    scores = coco_metrics.score(detected, truth, SIZE)
    assert scores["coco_AP"] == pytest.approx(expected_ap)
    # pycocotools averages 101 precisions: 1.0 to its rounding.
    assert scores["coco_AP50"] == pytest.approx(1.0)
    assert scores["coco_AP75"] == pytest.approx(1.0 if iou >= 0.75 else 0.0)


def test_no_detections_score_zero_and_another_class_is_a_miss():
    truth = _padded([_box(5, 5, 10, 10)], [2])
    assert coco_metrics.score(_padded([], [], []), truth, SIZE)["coco_AP"] == 0.0
    wrong_class = _padded([_box(5, 5, 10, 10)], [3], [0.9])
    assert coco_metrics.score(wrong_class, truth, SIZE)["coco_AP50"] == 0.0


def test_equal_to_pycocotools_own_pipeline_on_random_detections():
    """Many images and classes, detections near and far from the objects: the numbers equal
    those of pycocotools' documented path (ground truth from a dict, detections through
    `loadRes` as a results list), computed here independently of jvision's conversion."""
    rng = np.random.default_rng(0)
    images, objects, slots = 20, 3, 12
    truth = {"boxes": np.zeros((images, objects, 4)), "labels": np.full((images, objects), -1)}
    predicted = {
        "boxes": np.zeros((images, slots, 4)),
        "scores": rng.random((images, slots)),
        "labels": rng.integers(0, 5, (images, slots)),
        "valid": rng.random((images, slots)) < 0.8,
    }
    gt_annotations, results = [], []
    for image in range(images):
        for slot in range(rng.integers(1, objects + 1)):
            y, x = rng.uniform(0, 20), rng.uniform(0, 28)
            h, w = rng.uniform(4, 12), rng.uniform(4, 12)
            label = int(rng.integers(0, 5))
            truth["boxes"][image, slot] = _box(y, x, h, w)
            truth["labels"][image, slot] = label
            gt_annotations.append(
                dict(
                    id=len(gt_annotations) + 1,
                    image_id=image,
                    category_id=label + 1,
                    bbox=[x, y, w, h],
                    area=w * h,
                    iscrowd=0,
                )
            )
        for slot in range(slots):
            y, x = rng.uniform(0, 20), rng.uniform(0, 28)
            h, w = rng.uniform(4, 12), rng.uniform(4, 12)
            if slot < objects and truth["labels"][image, slot] >= 0 and rng.random() < 0.7:
                y0, x0, y1, x1 = truth["boxes"][image, slot] * [32, 40, 32, 40]  # Near an object.
                y, x, h, w = y0 + rng.normal(0, 1), x0 + rng.normal(0, 1), y1 - y0, x1 - x0
                predicted["labels"][image, slot] = truth["labels"][image, slot]
            predicted["boxes"][image, slot] = _box(y, x, h, w)
            if predicted["valid"][image, slot]:
                results.append(
                    dict(
                        image_id=image,
                        category_id=int(predicted["labels"][image, slot]) + 1,
                        bbox=[x, y, w, h],
                        score=float(predicted["scores"][image, slot]),
                    )
                )
    dataset = {
        "images": [{"id": i, "height": 32, "width": 40} for i in range(images)],
        "annotations": gt_annotations,
        "categories": [{"id": c + 1} for c in range(10)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        ground = COCO()
        ground.dataset = dataset
        ground.createIndex()
        evaluation = COCOeval(ground, ground.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    ours = coco_metrics.score(predicted, truth, SIZE)
    assert list(ours.values()) == pytest.approx(list(evaluation.stats), rel=1e-12, abs=1e-12)
    assert 0.01 < ours["coco_AP"] < 0.95  # Neither nothing nor everything found.
