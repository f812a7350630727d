"""TFDS `kitti` (2D object detection) as detection scenes: Cars only, one frame size.

TFDS's examples hold `image` [H, W, 3] (KITTI frames are about 375×1242, a few pixels off) and
`objects` (`type` names start with "Car", `bbox` normalised (ymin, xmin, ymax, xmax)). Here each
becomes what `mnist_detection` provides and the detectors read: `image` resized to
FRAME_SIZE (normalised boxes are unchanged by a resize), `boxes` [MAX_OBJECTS, 4] and `labels`
[MAX_OBJECTS] (0 = Car, -1 pads). Frames with more Cars keep the first MAX_OBJECTS.
"""

import numpy as np

FRAME_SIZE = (375, 1242)
MAX_OBJECTS = 24
CAR = 0  # Index of "Car" in TFDS kitti's `objects/type` names.


def to_detection(example) -> dict[str, np.ndarray]:
    import cv2

    objects = example["objects"]
    count = min(len(objects["type"]), len(objects["bbox"]))  # Equal in real data.
    types = np.asarray(objects["type"][:count])
    boxes = np.asarray(objects["bbox"][:count], np.float32).reshape(-1, 4)
    # Corners in order (TFDS's real boxes already are; its mock data's are random).
    boxes = np.concatenate(
        [np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])], axis=1
    )
    cars = boxes[types == CAR][:MAX_OBJECTS]
    padded_boxes = np.zeros((MAX_OBJECTS, 4), np.float32)
    padded_boxes[: len(cars)] = cars
    labels = np.full((MAX_OBJECTS,), -1, np.int64)
    labels[: len(cars)] = 0
    height, width = FRAME_SIZE
    image = cv2.resize(np.asarray(example["image"]), (width, height), interpolation=cv2.INTER_AREA)
    return {"image": image, "boxes": padded_boxes, "labels": labels}
