"""Detection quality on the host: PASCAL VOC 2007 11-point average precision, in NumPy."""

import numpy as np

RECALL_POINTS = np.linspace(0.0, 1.0, 11)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    top_left = np.maximum(box[:2], others[:, :2])
    bottom_right = np.minimum(box[2:], others[:, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0.0, None), axis=-1)
    union = np.prod(box[2:] - box[:2]) + np.prod(others[:, 2:] - others[:, :2], -1) - intersection
    return intersection / np.maximum(union, 1e-12)


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
            overlaps = _iou(box, gt_boxes[image])
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
