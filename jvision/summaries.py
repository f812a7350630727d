"""Images for TensorBoard: model outputs laid out as grids."""

import math

import numpy as np


def image_grid(images: np.ndarray, columns: int | None = None, pad_px: int = 1) -> np.ndarray:
    """Tiles images into one picture with `pad_px` gray lines between them.

    Args:
      images: [N, H, W, C] floats in [0, 1] (C is 1 or 3).
      columns: images per row (default: about square).
    Returns:
      [1, rows·(H+pad)+pad, columns·(W+pad)+pad, C] uint8, ready for `write_images`.
    """
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    count, height, width, channels = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.full(
        (rows * (height + pad_px) + pad_px, columns * (width + pad_px) + pad_px, channels),
        0.5,
        np.float32,
    )
    for index, image in enumerate(images):
        top = pad_px + (index // columns) * (height + pad_px)
        left = pad_px + (index % columns) * (width + pad_px)
        grid[top : top + height, left : left + width] = image
    return (grid[None] * 255).round().astype(np.uint8)
