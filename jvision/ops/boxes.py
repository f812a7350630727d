"""Box utilities for detection: one convention everywhere.

Corner boxes are `(ymin, xmin, ymax, xmax)` and centre boxes `(cy, cx, h, w)`, both in units of
the image size (0..1). Row coordinates come first, as in TFDS. Functions work on the last axis, so
any leading shape is allowed unless a docstring says otherwise.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np


def corners_to_centers(boxes: jax.Array) -> jax.Array:
    """[..., 4] (ymin, xmin, ymax, xmax) -> (cy, cx, h, w)."""
    ymin, xmin, ymax, xmax = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([(ymin + ymax) / 2, (xmin + xmax) / 2, ymax - ymin, xmax - xmin], axis=-1)


def centers_to_corners(boxes: jax.Array) -> jax.Array:
    """[..., 4] (cy, cx, h, w) -> (ymin, xmin, ymax, xmax)."""
    cy, cx, h, w = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)


def iou(a: jax.Array, b: jax.Array, xp=jnp) -> jax.Array:
    """Intersection over union of corner boxes: a [N, 4], b [M, 4] -> [N, M]. `xp` is the array
    module: `jnp` inside jit, `np` on the host (the evaluator's matching)."""
    top_left = xp.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = xp.minimum(a[:, None, 2:], b[None, :, 2:])
    intersection = xp.prod(xp.clip(bottom_right - top_left, 0.0, None), axis=-1)
    area_a = xp.prod(a[:, 2:] - a[:, :2], axis=-1)
    area_b = xp.prod(b[:, 2:] - b[:, :2], axis=-1)
    union = area_a[:, None] + area_b[None, :] - intersection
    return intersection / xp.maximum(union, 1e-12)


def encode(boxes: jax.Array, priors: jax.Array, variances=(10.0, 5.0)) -> jax.Array:
    """Regression targets of corner `boxes` [..., 4] against centre `priors` [..., 4].

    (g_cy, g_cx) = (c - c_prior) / (size_prior / v0);  (g_h, g_w) = v1 · log(size / size_prior).
    """
    centers = corners_to_centers(boxes)
    offset = (centers[..., :2] - priors[..., :2]) / (priors[..., 2:] / variances[0])
    scale = variances[1] * jnp.log(centers[..., 2:] / priors[..., 2:])
    return jnp.concatenate([offset, scale], axis=-1)


def decode(offsets: jax.Array, priors: jax.Array, variances=(10.0, 5.0)) -> jax.Array:
    """Inverse of `encode`: offsets [..., 4] and centre priors -> corner boxes (not clipped)."""
    centers = offsets[..., :2] * priors[..., 2:] / variances[0] + priors[..., :2]
    sizes = jnp.exp(offsets[..., 2:] / variances[1]) * priors[..., 2:]
    return centers_to_corners(jnp.concatenate([centers, sizes], axis=-1))


def ssd_priors(
    feature_sizes: tuple[int, ...],
    scales: tuple[float, ...],
    aspect_ratios: tuple[tuple[float, ...], ...],
) -> np.ndarray:
    """SSD prior boxes as centre boxes [P, 4], clipped to [0, 1].

    Order: feature map, then row, then column, then the map's aspect ratios in order, with one
    extra square prior of scale √(s_i · s_{i+1}) (√s_i on the last map) right after ratio 1. This
    is the order of a head's [B, H, W, priors·k] output reshaped to [B, H·W·priors, k]. The
    tutorial's last-map extra is 1.0 (its IndexError fallback), not √s_i: 4 of its 2,124 priors
    differ here (0.949 against 1.0 for scale 0.9); kept, since every SSD result and zoo entry was
    trained with these (`benchmarks/torch_models/ssd.tutorial_priors` converts the tutorial's).
    An aspect ratio is height / width: a prior of ratio r is s·√r tall and s/√r wide.
    """
    priors = []
    for index, (size, scale, ratios) in enumerate(
        zip(feature_sizes, scales, aspect_ratios, strict=True)
    ):
        next_scale = scales[index + 1] if index + 1 < len(scales) else 1.0
        for row, col in itertools.product(range(size), range(size)):
            cy, cx = (row + 0.5) / size, (col + 0.5) / size
            for ratio in ratios:
                priors.append([cy, cx, scale * np.sqrt(ratio), scale / np.sqrt(ratio)])
                if ratio == 1:
                    extra = np.sqrt(scale * next_scale)
                    priors.append([cy, cx, extra, extra])
    return np.clip(np.asarray(priors, np.float32), 0.0, 1.0)


def match(
    boxes: jax.Array,
    labels: jax.Array,
    priors: jax.Array,
    iou_threshold: float,
    background: int,
) -> tuple[jax.Array, jax.Array]:
    """Assigns one image's objects to priors (SSD matching).

    Each prior takes the object it overlaps most; each object also takes its best prior outright
    (overlap treated as 1). Priors whose overlap is below `iou_threshold` become background.

    Args:
      boxes: [M, 4] corner boxes; padding rows have label < 0.
      labels: [M] int, -1 for padding.
      priors: [P, 4] centre boxes.
    Returns:
      matched corner boxes [P, 4] and class targets [P] (`background` where unmatched).
    """
    valid = labels >= 0
    overlaps = jnp.where(valid[:, None], iou(boxes, centers_to_corners(priors)), -1.0)  # [M, P]
    best_object = jnp.argmax(overlaps, axis=0)
    best_overlap = jnp.max(overlaps, axis=0)
    best_prior = jnp.argmax(overlaps, axis=1)  # [M]
    for m in range(boxes.shape[0]):  # M is small and static; later objects win ties, as in torch.
        forced = valid[m]
        best_object = best_object.at[best_prior[m]].set(
            jnp.where(forced, m, best_object[best_prior[m]])
        )
        best_overlap = best_overlap.at[best_prior[m]].set(
            jnp.where(forced, 1.0, best_overlap[best_prior[m]])
        )
    classes = jnp.where(best_overlap >= iou_threshold, labels[best_object], background)
    return boxes[best_object], classes


def nms(
    boxes: jax.Array,
    scores: jax.Array,
    iou_threshold: float,
    score_threshold: float,
    max_outputs: int,
) -> tuple[jax.Array, jax.Array]:
    """Greedy non-maximum suppression with fixed-size output, for use inside jit.

    Boxes are visited in descending score order; a box is kept when its score exceeds
    `score_threshold` and no kept box overlaps it with IoU > `iou_threshold`.

    Args:
      boxes: [N, 4] corner boxes; scores: [N].
    Returns:
      indices [max_outputs] into the inputs (highest score first) and their validity [max_outputs].
      Only the `max_outputs` highest-scoring boxes are considered.
    """
    count = min(max_outputs, scores.shape[0])
    top_scores, order = jax.lax.top_k(scores, count)
    candidates = boxes[order]
    overlaps = iou(candidates, candidates)
    eligible = top_scores > score_threshold

    def visit(i, keep):
        suppressed = jnp.any(keep & (overlaps[i] > iou_threshold))
        return keep.at[i].set(eligible[i] & ~suppressed)

    keep = jax.lax.fori_loop(0, count, visit, jnp.zeros(count, bool))
    return order, keep


def per_class_nms(
    boxes: jax.Array,
    scores: jax.Array,
    iou_threshold: float,
    score_threshold: float,
    max_per_class: int,
) -> dict:
    """`nms` for each class of one image, as detections in the evaluators' format.

    Args:
      boxes: [N, 4] shared by the classes, or [K, N, 4] one set per class; scores: [K, N].
    Returns:
      boxes [K·M, 4], scores [K·M], labels [K·M] (class k for rows k·M to k·M + M - 1) and
      valid [K·M], with M = min(max_per_class, N).
    """

    def one_class(class_boxes, class_scores):
        order, keep = nms(class_boxes, class_scores, iou_threshold, score_threshold, max_per_class)
        return class_boxes[order], class_scores[order], keep

    boxes_axis = 0 if boxes.ndim == 3 else None
    kept_boxes, kept_scores, keep = jax.vmap(one_class, in_axes=(boxes_axis, 0))(boxes, scores)
    labels = jnp.broadcast_to(jnp.arange(scores.shape[0])[:, None], keep.shape)
    return {
        "boxes": kept_boxes.reshape(-1, 4),
        "scores": kept_scores.reshape(-1),
        "labels": labels.reshape(-1),
        "valid": keep.reshape(-1),
    }
