"""Images for TensorBoard and the workdir: grids of model outputs, rectangles drawn on them.

Model families return each summary as a grid `[rows, columns, H, W, C]` of floats in [0, 1]; the
trainer tiles it with `image_grid`. The helpers here work on NumPy and on traced JAX arrays.
"""

import jax.numpy as jnp
import numpy as np


def as_rows(images, columns: int):
    """[N, H, W, C] -> [ceil(N / columns), columns, H, W, C], padding the last row with zeros."""
    count = images.shape[0]
    rows = -(-count // columns)
    padding = jnp.zeros((rows * columns - count, *images.shape[1:]), images.dtype)
    return jnp.concatenate([images, padding]).reshape(rows, columns, *images.shape[1:])


def to_rgb(images):
    """[..., 1] grayscale -> [..., 3]; RGB passes through."""
    return jnp.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def draw_rectangles(images, boxes, color):
    """Draws 1-pixel rectangle outlines.

    Args:
      images: [N, H, W, 3] floats in [0, 1].
      boxes: [N, 4] (ymin, xmin, ymax, xmax) in 0-based pixel units; edges outside the image are
        not drawn.
      color: 3 floats.
    Returns:
      [N, H, W, 3].
    """
    _, height, width, _ = images.shape
    y0, x0, y1, x1 = (jnp.round(boxes[:, i])[:, None, None] for i in range(4))
    ys = jnp.arange(height)[None, :, None]
    xs = jnp.arange(width)[None, None, :]
    in_rows = (ys >= y0) & (ys <= y1)
    in_cols = (xs >= x0) & (xs <= x1)
    outline = (((ys == y0) | (ys == y1)) & in_cols) | (((xs == x0) | (xs == x1)) & in_rows)
    return jnp.where(outline[..., None], jnp.asarray(color, images.dtype), images)


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


def save_png(path: str, picture: np.ndarray) -> None:
    """Writes an [H, W, C] uint8 picture."""
    from PIL import Image

    Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture).save(path)


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


def draw_digit(images, top, left, digit, color):
    """Stamps one 3×5 digit glyph per image at integer pixel (top, left).

    Args:
      images: [N, H, W, 3]; top, left, digit: [N] ints (a digit < 0 draws nothing).
    """
    _, height, width, _ = images.shape
    dy = jnp.arange(height)[None, :, None] - top[:, None, None]
    dx = jnp.arange(width)[None, None, :] - left[:, None, None]
    inside = (dy >= 0) & (dy < 5) & (dx >= 0) & (dx < 3) & (digit[:, None, None] >= 0)
    glyph = jnp.asarray(GLYPHS)[
        jnp.clip(digit, 0)[:, None, None], jnp.clip(dy, 0, 4), jnp.clip(dx, 0, 2)
    ]
    return jnp.where((inside & glyph)[..., None], jnp.asarray(color, images.dtype), images)
