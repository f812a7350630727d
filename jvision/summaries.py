"""Pictures for TensorBoard, the workdir and notebooks, drawn on the host with NumPy.

A family's `image_summaries` computes numbers inside jit (images, boxes, scores); its
`draw_summaries` turns them into grids `[rows, columns, H, W, C]` of floats in [0, 1] with the
helpers here (rectangles, digit glyphs, detections); `image_grid` tiles a grid into one picture.
`jvision.pictures.Pictures` runs both for a model state. Nothing here imports JAX.
"""

import numpy as np


def as_rows(images: np.ndarray, columns: int) -> np.ndarray:
    """[N, H, W, C] -> [N / c, c, H, W, C] with c the largest divisor of N up to `columns`: whole
    rows, no padding tiles."""
    images = np.asarray(images)
    count = images.shape[0]
    columns = max(c for c in range(1, min(columns, count) + 1) if count % c == 0)
    return images.reshape(count // columns, columns, *images.shape[1:])


def text_tile(text: str, height: int, width: int, channels: int, size: int = 0) -> np.ndarray:
    """A [height, width, channels] tile of `text`, white on black, in PIL's built-in font
    (`size` in pixels; default: as large as fits)."""
    from PIL import Image, ImageDraw, ImageFont

    size = size or max(6, min(height, 2 * width // max(len(text), 1)) - 2)
    font = ImageFont.load_default(size=size)
    tile = Image.new("L", (width, height))
    draw = ImageDraw.Draw(tile)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    position = ((width - (right - left)) / 2 - left, (height - (bottom - top)) / 2 - top)
    draw.text(position, text, fill=255, font=font)
    tile = np.asarray(tile, np.float32)[..., None] / 255
    return np.repeat(tile, channels, axis=-1)


def with_column_labels(grid, labels: list[str]) -> np.ndarray:
    """A grid [rows, columns, H, W, C] with a first row naming its columns (`labels` repeated
    along the row): e.g. ["in", "out"] over input / reconstruction pairs."""
    grid = np.asarray(grid)
    _, columns, height, width, channels = grid.shape
    size = max(6, min(height, 2 * width // max(map(len, labels))) - 2)  # One size: the longest's.
    tiles = [
        text_tile(labels[c % len(labels)], height, width, channels, size) for c in range(columns)
    ]
    return np.concatenate([np.stack(tiles)[None].astype(grid.dtype), grid])


def to_rgb(images: np.ndarray) -> np.ndarray:
    """[..., 1] grayscale -> [..., 3]; RGB passes through."""
    images = np.asarray(images)
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def draw_rectangles(images: np.ndarray, boxes: np.ndarray, color) -> np.ndarray:
    """Draws 1-pixel rectangle outlines.

    Args:
      images: [N, H, W, 3] floats in [0, 1].
      boxes: [N, 4] (ymin, xmin, ymax, xmax) in 0-based pixel units, NaN for none; edges outside
        the image are not drawn.
      color: 3 floats.
    Returns:
      A copy of `images` with the outlines, [N, H, W, 3].
    """
    images = np.array(images, np.float32)
    _, height, width, _ = images.shape
    corners = np.round(np.nan_to_num(np.asarray(boxes, np.float64), nan=-1e6))
    y0, x0, y1, x1 = (corners[:, i][:, None, None] for i in range(4))
    ys = np.arange(height)[None, :, None]
    xs = np.arange(width)[None, None, :]
    in_rows = (ys >= y0) & (ys <= y1)
    in_cols = (xs >= x0) & (xs <= x1)
    outline = (((ys == y0) | (ys == y1)) & in_cols) | (((xs == x0) | (xs == x1)) & in_rows)
    images[outline] = color
    return images


def image_grid(grid, pad_px: int = 1) -> np.ndarray:
    """Tiles a grid of images into one picture with `pad_px` gray lines between them.

    Args:
      grid: [rows, columns, H, W, C] floats in [0, 1] (C is 1 or 3).
    Returns:
      [1, rows·(H+pad)+pad, columns·(W+pad)+pad, C] uint8, ready for `write_images`.
    """
    grid = np.clip(np.asarray(grid, np.float32), 0.0, 1.0)
    rows, columns, height, width, channels = grid.shape
    padded = np.full((rows, columns, height + pad_px, width + pad_px, channels), 0.5, np.float32)
    padded[:, :, pad_px:, pad_px:] = grid
    picture = padded.transpose(0, 2, 1, 3, 4).reshape(
        rows * (height + pad_px), columns * (width + pad_px), channels
    )
    picture = np.pad(picture, ((0, pad_px), (0, pad_px), (0, 0)), constant_values=0.5)
    return (picture[None] * 255).round().astype(np.uint8)


def grid_rows(grid, pad_px: int = 1) -> np.ndarray:
    """Each row of a grid as one picture: [rows, columns, H, W, C] -> [rows, h, w, C] uint8."""
    return np.concatenate([image_grid(row[None], pad_px) for row in np.asarray(grid)])


# 3×5 pixel glyphs of the digits 0-9, for labels and scores drawn next to boxes.
_GLYPH_ROWS = (
    ("111", "101", "101", "101", "111"),
    ("010", "110", "010", "010", "111"),
    ("111", "001", "111", "100", "111"),
    ("111", "001", "111", "001", "111"),
    ("101", "101", "111", "001", "001"),
    ("111", "100", "111", "001", "111"),
    ("111", "100", "111", "101", "111"),
    ("111", "001", "001", "001", "001"),
    ("111", "101", "111", "101", "111"),
    ("111", "101", "111", "001", "111"),
)
GLYPHS = np.array([[[c == "1" for c in row] for row in glyph] for glyph in _GLYPH_ROWS])
GLYPH_HEIGHT, GLYPH_WIDTH = GLYPHS.shape[1:]


def draw_text(image: np.ndarray, top: int, left: int, digits: str, color) -> np.ndarray:
    """Stamps a string of digits (3×5 glyphs, 1 px apart) onto one [H, W, 3] image, in place;
    pixels outside the image are skipped. Returns the image."""
    height, width, _ = image.shape
    for index, character in enumerate(digits):
        glyph = GLYPHS[int(character)]
        x = left + index * (GLYPH_WIDTH + 1)
        for dy, dx in zip(*np.nonzero(glyph), strict=True):
            if 0 <= top + dy < height and 0 <= x + dx < width:
                image[top + dy, x + dx] = color
    return image


def labelled_boxes(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray | None,
    box_color,
    text_color=None,
) -> np.ndarray:
    """One [H, W, 3] image with each box [K, 4] (pixels) outlined and labelled at its top-left
    corner with its class and, when `scores` are given, the score in percent (`7 93`)."""
    image = np.array(image, np.float32)
    for index, box in enumerate(boxes):
        image = draw_rectangles(image[None], box[None], box_color)[0]
        top, left = int(round(box[0])) + 2, int(round(box[1])) + 2
        draw_text(image, top, left, str(int(labels[index])), box_color)
        if scores is not None:
            percent = f"{min(int(scores[index] * 100), 99):02d}"
            draw_text(image, top, left + GLYPH_WIDTH + 3, percent, text_color or box_color)
    return image


GROUND_TRUTH_COLOR = (0.1, 0.9, 0.1)
DETECTION_COLOR = (0.95, 0.15, 0.1)
SCORE_COLOR = (1.0, 0.85, 0.2)


def draw_detections(
    images: np.ndarray,
    detections: dict[str, np.ndarray],
    truth: dict[str, np.ndarray] | None = None,
    min_score: float = 0.4,
    max_boxes: int = 8,
    scale: int | None = None,
) -> np.ndarray:
    """Scenes with their detections, enlarged `scale`× so labels and scores are legible.

    Args:
      images: [N, H, W, C] in [0, 1].
      detections: `boxes` [N, K, 4] (normalised ymin, xmin, ymax, xmax), `scores`, `labels`,
        `valid` [N, K], as a detector's `predict` returns them.
      truth: optional ground truth, `boxes` [N, M, 4] normalised and `labels` [N, M] (-1 pads),
        drawn in green.
      min_score: detections scoring lower are not drawn; at most `max_boxes`, best first, are.
      scale: enlargement (default: to about 128 px, at least 1).
    Returns:
      [N, scale·H, scale·W, 3]: detections in red, labelled with class and score in percent.
    """
    images = np.asarray(images)
    scale = scale or max(1, 128 // max(images.shape[1:3]))
    images = to_rgb(np.repeat(np.repeat(images, scale, 1), scale, 2))
    size = np.array(images.shape[1:3] * 2, np.float64)
    pictures = []
    for index, image in enumerate(images):
        image = np.array(image, np.float32)
        if truth is not None:
            real = truth["labels"][index] >= 0
            for box in truth["boxes"][index][real] * size:
                image = draw_rectangles(image[None], box[None], GROUND_TRUTH_COLOR)[0]
        shown = detections["valid"][index] & (detections["scores"][index] >= min_score)
        order = np.argsort(-np.where(shown, detections["scores"][index], -1.0))[:max_boxes]
        order = order[shown[order]]
        image = labelled_boxes(
            image,
            detections["boxes"][index][order] * size,
            detections["labels"][index][order],
            detections["scores"][index][order],
            DETECTION_COLOR,
            SCORE_COLOR,
        )
        pictures.append(image)
    return np.stack(pictures)


def detection_outputs(batch: dict, predicted: dict) -> dict:
    """What a detector's `image_summaries` returns for `detection_rows`: the scenes, their
    ground truth and the detections (`predict`'s fields)."""
    return {
        "images": batch["image"],
        "true_boxes": batch["boxes"],
        "true_labels": batch["labels"],
        **predicted,
    }


def detection_rows(outputs: dict, min_score: float, row_px: int = 1024) -> np.ndarray:
    """A detector's scenes (from `detection_outputs`) drawn with ground truth and detections
    scoring at least `min_score`, enlarged, as a grid with rows of at most `row_px` pixels."""
    truth = {"boxes": outputs["true_boxes"], "labels": outputs["true_labels"]}
    pictures = draw_detections(outputs["images"], outputs, truth, min_score=min_score)
    return as_rows(pictures, max(1, row_px // pictures.shape[2]))
