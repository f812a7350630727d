"""Detection quality on the host: PASCAL VOC 2007 11-point average precision, in NumPy.

Detectors' outputs are padded to a fixed size (`predict`: `boxes` [N, K, 4] normalised
(ymin, xmin, ymax, xmax), `scores` [N, K], `labels` [N, K], `valid` [N, K]); ground truth is
padded with label -1 (`boxes` [N, M, 4], `labels` [N, M]). `unpad_*` turn them into the per-image
lists `voc07_average_precision` scores.
"""

import logging

import numpy as np

from jvision.ops import boxes as box_ops

log = logging.getLogger(__name__)

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


def score(
    predictions: dict,
    ground_truth: dict,
    num_classes: int = 10,
    iou_threshold: float = 0.5,
    check_convention: bool = True,
) -> dict[str, float]:
    """The detection evaluator's numbers for padded arrays: `{"mAP": ..., "AP_<class>": ...}`.

    Args:
      predictions: what a detector's `predict` returns (`jvision.evaluate.Run.predict`): `boxes`
        [N, K, 4] normalised (ymin, xmin, ymax, xmax) in [0, 1], `scores` [N, K], `labels`
        [N, K] (class indices), `valid` [N, K] (bool: padding rows False).
      ground_truth: `boxes` [N, M, 4] in the same convention and `labels` [N, M], -1 for padding.
      num_classes, iou_threshold: as the evaluator's (VOC07: a detection counts when it overlaps
        an unclaimed ground-truth box of its class by more than `iou_threshold`).
      check_convention: check what a caller's predictions may get wrong: valid predicted boxes
        far outside [0, 1] raise (pixels rather than fractions of the image), and the ground
        truth is also scored with x and y swapped, with a warning when that matches far better
        (the two sides disagree on the box convention). Off for a model's own predictions in
        the trainer: an untrained or diverging detector's boxes may lie anywhere.
    Raises:
      ValueError: ground-truth boxes outside [0, 1] or with min > max, or (check_convention)
        valid predicted ones far outside [0, 1].
    """
    real = np.asarray(ground_truth["labels"]) >= 0
    valid = np.asarray(predictions["valid"], bool)
    # Ground truth lies in the image; predicted boxes may cross its border (the SSD's are not
    # clipped), but pixel coordinates fall far outside either range.
    ranges = [("ground_truth", np.asarray(ground_truth["boxes"])[real], (-0.01, 1.01))]
    if check_convention:
        ranges.append(("predictions", np.asarray(predictions["boxes"])[valid], (-1.0, 2.0)))
    for name, boxes, (low, high) in ranges:
        if boxes.size and (boxes.min() < low or boxes.max() > high):
            raise ValueError(
                f"{name} boxes span [{boxes.min():g}, {boxes.max():g}]: boxes are fractions of "
                "the image (ymin, xmin, ymax, xmax), 0 to 1; divide pixel coordinates by its size"
            )
    truth = np.asarray(ground_truth["boxes"])[real]
    if len(truth) and ((truth[:, 2] < truth[:, 0]) | (truth[:, 3] < truth[:, 1])).any():
        raise ValueError(
            "ground_truth boxes have min > max: the convention is (ymin, xmin, ymax, xmax)"
        )
    detections = unpad_detections(predictions)
    aps = voc07_average_precision(
        detections, unpad_ground_truth(ground_truth), num_classes, iou_threshold
    )
    if check_convention:
        _warn_if_transposed(detections, ground_truth, aps, num_classes, iou_threshold)
    return {"mAP": float(aps.mean()), **{f"AP_{c}": float(ap) for c, ap in enumerate(aps)}}


def _warn_if_transposed(detections, ground_truth, aps, num_classes, iou_threshold) -> None:
    """The mistake the box convention invites: (xmin, ymin, xmax, ymax). When the ground truth
    matches far better with x and y swapped (over the classes it holds), the two sides disagree
    on the convention: a warning."""
    labels = np.asarray(ground_truth["labels"])
    present = np.unique(labels[labels >= 0])
    present = present[present < num_classes]
    if not len(present):
        return
    swapped = {**ground_truth, "boxes": np.asarray(ground_truth["boxes"])[..., [1, 0, 3, 2]]}
    transposed = voc07_average_precision(
        detections, unpad_ground_truth(swapped), num_classes, iou_threshold
    )[present].mean()
    given = aps[present].mean()
    if transposed > max(2 * given, given + 0.2):
        log.warning(
            "mAP %.3g, but %.3g with the ground truth's x and y swapped: predictions and ground "
            "truth are in different box conventions (jvision's: ymin, xmin, ymax, xmax)",
            given,
            transposed,
        )


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
