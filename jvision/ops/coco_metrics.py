"""COCO's detection metrics, computed by pycocotools (`COCOeval`, the "bbox" task) on the host.

The reported numbers are `COCOeval.stats` under jvision's names (`METRICS`): AP averaged over
IoU 0.50:0.05:0.95 (`coco_AP`), at IoU 0.5 and 0.75, and by object size (small < 32² pixels ≤
medium < 96² ≤ large, by the ground truth box's area), then average recall with at most 1, 10
and 100 detections per image and by size. A size with no ground truth object reports -1
(COCO's convention): jvision's 32×32 MNIST scenes hold small objects only.

Inputs are jvision's padded detector outputs and ground truth (`jvision.ops.detection_metrics`),
with boxes normalised (ymin, xmin, ymax, xmax); COCO's boxes are (x, y, width, height) in
pixels of an image of `image_size` (H, W). Class `c` is COCO category `c` + 1.
"""

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jvision.ops.detection_metrics import unpad_detections, unpad_ground_truth

METRICS = (
    "coco_AP",
    "coco_AP50",
    "coco_AP75",
    "coco_AP_small",
    "coco_AP_medium",
    "coco_AP_large",
    "coco_AR1",
    "coco_AR10",
    "coco_AR100",
    "coco_AR_small",
    "coco_AR_medium",
    "coco_AR_large",
)


def coco_boxes(boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """[N, 4] normalised (ymin, xmin, ymax, xmax) -> COCO's [N, 4] (x, y, width, height) in
    pixels."""
    height, width = image_size
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    ymin, xmin = boxes[:, 0] * height, boxes[:, 1] * width
    return np.stack([xmin, ymin, boxes[:, 3] * width - xmin, boxes[:, 2] * height - ymin], axis=-1)


def _dataset(images: list[dict], per_image: list[dict], image_size, num_classes, scored: bool):
    """A COCO dataset dict of the objects (or detections, `scored`) of each image."""
    annotations = []
    for image, found in enumerate(per_image):
        boxes = coco_boxes(found["boxes"], image_size)
        for index, (box, label) in enumerate(zip(boxes, found["labels"], strict=True)):
            annotation = {
                "id": len(annotations) + 1,
                "image_id": image,
                "category_id": int(label) + 1,
                "bbox": [float(v) for v in box],
                "area": float(box[2] * box[3]),
                "iscrowd": 0,
            }
            if scored:
                annotation["score"] = float(found["scores"][index])
            annotations.append(annotation)
    categories = [{"id": c + 1, "name": str(c)} for c in range(num_classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def score(
    predictions: dict, ground_truth: dict, image_size: tuple[int, int], num_classes: int = 10
) -> dict[str, float]:
    """`{name: value}` for the `METRICS`, from padded arrays as `detection_metrics.score` takes
    them, for images of `image_size` (H, W) pixels."""
    height, width = (int(size) for size in image_size)
    truths = unpad_ground_truth(ground_truth)
    images = [{"id": index, "height": height, "width": width} for index in range(len(truths))]
    truth = _dataset(images, truths, (height, width), num_classes, scored=False)
    detected = _dataset(
        images, unpad_detections(predictions), (height, width), num_classes, scored=True
    )
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it goes.
        evaluation = COCOeval(_coco(truth), _coco(detected), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {name: float(value) for name, value in zip(METRICS, evaluation.stats, strict=True)}
