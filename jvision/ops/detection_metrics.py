"""Detection quality on the host: PASCAL VOC 2007 11-point average precision, in NumPy.

Detectors' outputs are padded to a fixed size (`predict`: `boxes` [N, K, 4] normalised
(ymin, xmin, ymax, xmax), `scores` [N, K], `labels` [N, K], `valid` [N, K]); ground truth is
padded with label -1 (`boxes` [N, M, 4], `labels` [N, M]). `unpad_*` turn them into the per-image
lists `voc07_average_precision` scores.
"""

import numpy as np

from jvision.ops import boxes as box_ops

RECALL_POINTS = np.linspace(0.0, 1.0, 11)


def unpad_detections(predicted: dict, rows: np.ndarray | None = None) -> list[dict]:
    """Padded detections -> per image `{boxes, scores, labels}` of its valid detections, for the
    images where `rows` [N] (bool) is True (default: all)."""
    valid = np.asarray(predicted["valid"], bool)
    rows = np.ones(len(valid), bool) if rows is None else np.asarray(rows, bool)
    return [
        {k: np.asarray(predicted[k])[index][valid[index]] for k in ("boxes", "scores", "labels")}
        for index in np.flatnonzero(rows)
    ]


def unpad_ground_truth(truth: dict, rows: np.ndarray | None = None) -> list[dict]:
    """Padded ground truth -> per image `{boxes, labels}` of its real objects (label ≥ 0)."""
    labels = np.asarray(truth["labels"])
    rows = np.ones(len(labels), bool) if rows is None else np.asarray(rows, bool)
    return [
        {
            "boxes": np.asarray(truth["boxes"])[index][labels[index] >= 0],
            "labels": labels[index][labels[index] >= 0],
        }
        for index in np.flatnonzero(rows)
    ]


def voc07_average_precision(
    detections: list[dict[str, np.ndarray]],
    ground_truths: list[dict[str, np.ndarray]],
    num_classes: int,
    iou_threshold: float = 0.5,
) -> np.ndarray:
    """Per-class 11-point interpolated AP over a dataset.

    Args:
      detections: per image, `boxes` [D, 4], `scores` [D], `labels` [D].
      ground_truths: per image, `boxes` [G, 4], `labels` [G].
      iou_threshold: a detection is a true positive when its best same-class ground truth in
        the same image overlaps it by more than this and was not already taken (duplicates are
        false positives).
    Returns:
      [num_classes] APs; a class without ground truth gets 0.
    """
    aps = np.zeros(num_classes)
    for cls in range(num_classes):
        gt_boxes = [g["boxes"][g["labels"] == cls] for g in ground_truths]
        num_gt = sum(len(b) for b in gt_boxes)
        entries = [
            (score, image, box)
            for image, d in enumerate(detections)
            for score, box in zip(
                d["scores"][d["labels"] == cls], d["boxes"][d["labels"] == cls], strict=True
            )
        ]
        if num_gt == 0 or not entries:
            continue
        entries.sort(key=lambda entry: -entry[0])
        taken = [np.zeros(len(b), bool) for b in gt_boxes]
        true_positive = np.zeros(len(entries))
        for rank, (_, image, box) in enumerate(entries):
            if len(gt_boxes[image]) == 0:
                continue
            overlaps = box_ops.iou(box[None], gt_boxes[image], np)[0]
            best = int(np.argmax(overlaps))
            if overlaps[best] > iou_threshold and not taken[image][best]:
                taken[image][best] = True
                true_positive[rank] = 1
        hits = np.cumsum(true_positive)
        recall = hits / num_gt
        precision = hits / np.arange(1, len(entries) + 1)
        aps[cls] = np.mean(
            [precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in RECALL_POINTS]
        )
    return aps
