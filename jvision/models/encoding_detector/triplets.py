"""Training triplets for the encoding detector, made from detection scenes (pytlib's loader, fixed).

From a scene with labelled boxes (`image` [H, W, C] uint8, `boxes` [M, 4] normalised (ymin,
xmin, ymax, xmax), `labels` [M], -1 padding), one triplet is:

- a **positive search crop**: one object's box, enlarged ×2 about its centre as a square window
  (side = 2·max(height, width)), resized to `search_size`²;
- an **exemplar**: another object of the same class from another scene, its box's square window
  (side = max(height, width)), resized to `exemplar_size`²;
  (pytlib's scale normalisation: each object fills the exemplar. With `window_px` > 0 the windows
  have a fixed side instead, `window_px` and twice that, so objects keep the scale they have in
  the scenes, where detection runs at the scenes' own scale);
- a **negative search crop**: a window of the positive's side centred on an object of another
  class in a random scene, touching no object of the exemplar's class (that teaches the classes
  apart; pytlib's uniform windows mostly show background);
- **targets** on the response grid: cell (i, j) is 1 when the centre of the exemplar-sized window
  it compares lies inside a box of the class (in the positive crop), else 0; all zeros for the
  negative.

Windows are square, so crops keep the aspect ratio; pixels outside the scene are zeros. Exemplar
and positive are resized by the same factor (search = 2 × exemplar), so an object appears at the
same scale in both, as SiamFC requires. Every choice comes from the `rng` given, so a seed fixes
the triplets.

Where pytlib differs (not copied): its targets pool the box mask over the whole search crop,
while the responses only see window centres in its middle (a geometry mismatch); its exemplar is
a non-square box squeezed to a square.
"""

import cv2
import numpy as np

from jvision.errors import UserError
from jvision.ops import correlation


def square_window(
    box_px: np.ndarray, enlarge: float, fixed_side: float = 0
) -> tuple[float, float, float]:
    """The square window centred on a box [4] (pixels): (top, left, side). Its side is
    enlarge·max(height, width) (the object's scale, normalised by the resize that follows), or
    enlarge·fixed_side when that is given (the scene's own scale kept)."""
    y0, x0, y1, x1 = box_px
    side = enlarge * (fixed_side or max(y1 - y0, x1 - x0))
    return (y0 + y1) / 2 - side / 2, (x0 + x1) / 2 - side / 2, side


def crop(image: np.ndarray, top: float, left: float, side: float, size: int) -> np.ndarray:
    """The square window (top, left, side) of `image` [H, W, C], zeros outside the image, resized
    to [size, size, C] (bicubic, as pytlib). Coordinates are rounded to whole pixels."""
    top, left, side = round(top), round(left), max(1, round(side))
    height, width, channels = image.shape
    window = np.zeros((side, side, channels), image.dtype)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + side, height), min(left + side, width)
    if y1 > y0 and x1 > x0:
        window[y0 - top : y1 - top, x0 - left : x1 - left] = image[y0:y1, x0:x1]
    resized = cv2.resize(window, (size, size), interpolation=cv2.INTER_CUBIC)
    return resized.reshape(size, size, channels)


def to_window(boxes_px: np.ndarray, top: float, left: float, side: float, size: int):
    """Boxes [M, 4] in image pixels -> the same boxes in the pixels of the resized window."""
    top, left, side = round(top), round(left), max(1, round(side))
    return (boxes_px - np.array([top, left, top, left])) * (size / side)


def cell_labels(boxes: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """[R, R] labels: 1 where the window centre (centres[i], centres[j]) lies inside any box
    [M, 4] (same pixel frame), else 0."""
    cy, cx = centres[:, None, None], centres[None, :, None]
    inside = (cy >= boxes[:, 0]) & (cy <= boxes[:, 2]) & (cx >= boxes[:, 1]) & (cx <= boxes[:, 3])
    return inside.any(axis=-1).astype(np.float32)


def _objects(example) -> tuple[np.ndarray, np.ndarray]:
    """Real boxes in pixels [M, 4] and their labels [M]."""
    height, width = example["image"].shape[:2]
    labels = np.asarray(example["labels"])
    real = labels >= 0
    scale = np.array([height, width, height, width], np.float64)
    return np.asarray(example["boxes"], np.float64)[real] * scale, labels[real]


def _intersects(boxes: np.ndarray, top: float, left: float, side: float) -> bool:
    """Whether any box [M, 4] overlaps the square window (top, left, side)."""
    return bool(
        np.any(
            (boxes[:, 0] < top + side)
            & (boxes[:, 2] > top)
            & (boxes[:, 1] < left + side)
            & (boxes[:, 3] > left)
        )
    )


class Triplets:
    """Makes one triplet per scene index of a random-access `source` (see the module doc).
    Indices of scenes without objects map to scenes with some (KITTI frames without cars)."""

    NEGATIVE_TRIES = 20

    def __init__(self, source, settings):
        self.source = source
        self.exemplar_size = settings.exemplar_size
        self.search_size = settings.search_size
        self.window_px = settings.get("window_px", 0)
        self.centres = correlation.response_centres(
            self.search_size, self.exemplar_size, tuple(settings.strides)
        )
        labels = [_objects(source[i])[1] for i in range(len(source))]
        self.with_objects = [s for s, ls in enumerate(labels) if len(ls)]
        if not self.with_objects:
            raise UserError("triplets need scenes with objects; this split has none")
        self.objects = [  # Per class: (scene, object) pairs.
            [(s, o) for s, ls in enumerate(labels) for o, c in enumerate(ls) if c == k]
            for k in range(settings.num_classes)
        ]

    def __call__(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        index = (
            index
            if len(_objects(self.source[index])[1])
            else self.with_objects[index % len(self.with_objects)]
        )
        scene = self.source[index]
        boxes, labels = _objects(scene)
        chosen = rng.integers(len(boxes))
        kind = int(labels[chosen])

        top, left, side = square_window(boxes[chosen], 2.0, self.window_px)
        positive = crop(scene["image"], top, left, side, self.search_size)
        same = to_window(boxes[labels == kind], top, left, side, self.search_size)
        target = cell_labels(same, self.centres)

        others = [pair for pair in self.objects[kind] if pair[0] != index] or self.objects[kind]
        other_scene, other_object = others[rng.integers(len(others))]
        other_boxes, _ = _objects(self.source[other_scene])
        exemplar = crop(
            self.source[other_scene]["image"],
            *square_window(other_boxes[other_object], 1.0, self.window_px),
            self.exemplar_size,
        )
        return {
            "search_positive": positive,
            "search_negative": self._negative(kind, side, rng),
            "exemplar": exemplar,
            "target_positive": target,
            "label": np.int32(kind),
        }

    def _negative(self, kind: int, side: float, rng: np.random.Generator) -> np.ndarray:
        """A window of `side` in a random scene, touching no object of `kind`: centred on an
        object of another class when the scene has one (what teaches the classes apart; windows
        at uniform places mostly show background and teach only "object or not"), else at a
        uniform place. pytlib drew up to 10 uniform windows; after NEGATIVE_TRIES, an empty one."""
        for _ in range(self.NEGATIVE_TRIES):
            scene = self.source[int(rng.integers(len(self.source)))]
            boxes, labels = _objects(scene)
            others = boxes[labels != kind]
            if len(others):
                y0, x0, y1, x1 = others[rng.integers(len(others))]
                centre_y, centre_x = (y0 + y1) / 2, (x0 + x1) / 2
            else:
                height, width = scene["image"].shape[:2]
                centre_y, centre_x = rng.uniform(0, height), rng.uniform(0, width)
            top, left = centre_y - side / 2, centre_x - side / 2
            if not _intersects(boxes[labels == kind], top, left, side):
                return crop(scene["image"], top, left, side, self.search_size)
        channels = scene["image"].shape[-1]
        return np.zeros((self.search_size, self.search_size, channels), np.uint8)


class Exemplars:
    """Every object of a scene as an exemplar crop (for the class exemplar bank): `exemplars`
    [max_objects, E, E, C] and `exemplar_labels` [max_objects] (-1 pads)."""

    def __init__(self, source, settings):
        self.source = source
        self.exemplar_size = settings.exemplar_size
        self.window_px = settings.get("window_px", 0)

    def __call__(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        del rng  # Deterministic.
        scene = self.source[index]
        boxes, labels = _objects(scene)
        slots = len(np.asarray(scene["labels"]))
        channels = scene["image"].shape[-1]
        crops = np.zeros((slots, self.exemplar_size, self.exemplar_size, channels), np.uint8)
        padded = np.full((slots,), -1, np.int32)
        for slot, (box, label) in enumerate(zip(boxes, labels, strict=True)):
            window = square_window(box, 1.0, self.window_px)
            crops[slot] = crop(scene["image"], *window, self.exemplar_size)
            padded[slot] = label
        return {"exemplars": crops, "exemplar_labels": padded}
