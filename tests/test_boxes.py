"""Box ops against plain NumPy: IoU, coding, priors, matching and NMS.

IoU and the box coding are compared in float64 on both sides (`helpers.float64`; u = 2⁻⁵³ ≈
1.1e-16), so that the bounds follow from float64 rounding and not from one CPU's float32 kernels.
"""

import numpy as np
import pytest
from helpers import float64

from jvision.ops import boxes


def numpy_iou(a, b):
    out = np.zeros((len(a), len(b)))
    for i, (y0, x0, y1, x1) in enumerate(a):
        for j, (v0, u0, v1, u1) in enumerate(b):
            inter = max(0, min(y1, v1) - max(y0, v0)) * max(0, min(x1, u1) - max(x0, u0))
            union = (y1 - y0) * (x1 - x0) + (v1 - v0) * (u1 - u0) - inter
            out[i, j] = inter / union
    return out


def random_boxes(rng, n):
    corner = rng.random((n, 2)) * 0.7
    return np.concatenate([corner, corner + 0.05 + rng.random((n, 2)) * 0.3], axis=1)


def test_iou_matches_numpy_and_edge_cases():
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 5), random_boxes(rng, 7)
    with float64():
        got = np.asarray(boxes.iou(a, b))
    # About 10 roundings per IoU, each ≤ u relative and none cancelling (each side of the
    # intersection is one subtraction of exact inputs; the union ≥ the larger area ≥ the
    # intersection): ≤ 20u ≈ 2e-15 apart. Disjoint pairs are exactly 0 on both sides.
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, numpy_iou(a, b), rtol=1e-13, atol=0)
    unit = np.array([[0.0, 0.0, 1.0, 1.0]])
    np.testing.assert_allclose(boxes.iou(unit, unit), [[1.0]])
    np.testing.assert_allclose(boxes.iou(unit, np.array([[2.0, 2.0, 3.0, 3.0]])), [[0.0]])
    np.testing.assert_allclose(boxes.iou(unit, np.array([[0.0, 0.0, 1.0, 0.5]])), [[0.5]])


def test_encode_formula_and_round_trip():
    rng = np.random.default_rng(1)
    gt = random_boxes(rng, 6)
    priors = np.concatenate([rng.random((6, 2)), 0.1 + rng.random((6, 2)) * 0.5], 1)
    with float64():
        code = np.asarray(boxes.encode(gt, priors))
        decoded = np.asarray(boxes.decode(code, priors))
    assert code.dtype == decoded.dtype == np.float64
    cy, cx = (gt[:, 0] + gt[:, 2]) / 2, (gt[:, 1] + gt[:, 3]) / 2
    h, w = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    expected = np.stack(
        [
            (cy - priors[:, 0]) / (priors[:, 2] / 10),
            (cx - priors[:, 1]) / (priors[:, 3] / 10),
            5 * np.log(h / priors[:, 2]),
            5 * np.log(w / priors[:, 3]),
        ],
        axis=1,
    )
    # Coordinates are ≤ 1.5, sizes ≥ 0.05 and prior sizes ≥ 0.1: a centre offset (c - p)·10/s
    # has an absolute error ≤ 2u·1.5·100 ≈ 3e-14 (the subtraction may cancel, the division by
    # s/10 multiplies by ≤ 100), a log-size term 5·log(h/s) ≤ 5·(1.5/0.05 + 2)·u ≈ 2e-14. Decoding
    # (×s/10, exp(·/5)·s, ± size/2) maps these to ≤ 1e-14 on the corners. ATOL = 1e-12.
    np.testing.assert_allclose(code, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(decoded, gt, rtol=0, atol=1e-12)


def test_tutorial_priors_count_and_order():
    ratios = (
        (1, 2, 4, 8, 0.5),
        (1, 2, 4, 6, 0.5, 1 / 3),
        (1, 2, 3, 5, 0.5, 1 / 3),
        (1, 2, 3, 5, 0.5, 1 / 3),
    )
    scales = tuple(np.linspace(0.1, 0.9, 4))
    priors = boxes.ssd_priors((16, 8, 4, 2), scales, ratios)
    assert priors.shape == (2124, 4)
    s0, s1 = scales[0], scales[1]
    # `ssd_priors` returns float32 (the library's choice): each prior is computed in float64 and
    # rounded once, ≤ 2⁻²⁴ relative; the expected values are the same float64 arithmetic. RTOL is
    # one float32 ulp, 2⁻²³, twice that bound; a wrong ratio or scale is off by ≥ 1e-2.
    rtol = 2.0**-23
    # Map 1, row 0, column 0: ratio 1, the extra square prior, then ratios 2, 4, 8, 0.5.
    np.testing.assert_allclose(priors[0], [1 / 32, 1 / 32, s0, s0], rtol=rtol)
    np.testing.assert_allclose(priors[1, 2:], [np.sqrt(s0 * s1)] * 2, rtol=rtol)
    np.testing.assert_allclose(priors[2, 2:], [s0 * np.sqrt(2), s0 / np.sqrt(2)], rtol=rtol)
    np.testing.assert_allclose(priors[5, 2:], [s0 * np.sqrt(0.5), s0 / np.sqrt(0.5)], rtol=rtol)
    # Columns vary fastest, then rows.
    np.testing.assert_allclose(priors[6, :2], [1 / 32, 3 / 32], rtol=rtol)
    np.testing.assert_allclose(priors[16 * 6, :2], [3 / 32, 1 / 32], rtol=rtol)
    # Map 2 starts after 16·16·6 priors; the last map's extra prior has scale √(0.9·1).
    np.testing.assert_allclose(priors[1536, :2], [1 / 16, 1 / 16], rtol=rtol)
    np.testing.assert_allclose(priors[-6, 2:], [np.sqrt(0.9), np.sqrt(0.9)], rtol=rtol)
    assert priors.min() >= 0 and priors.max() <= 1


def test_match_forces_every_object_onto_its_best_prior():
    priors = np.array(
        [
            [0.25, 0.25, 0.5, 0.5],
            [0.75, 0.75, 0.5, 0.5],
            [0.5, 0.5, 0.2, 0.2],
            [0.1, 0.9, 0.1, 0.1],
        ],
        np.float32,
    )
    gt = np.array([[0.0, 0.0, 0.5, 0.5], [0.45, 0.45, 0.55, 0.55], [0, 0, 0, 0]], np.float32)
    labels = np.array([3, 7, -1])
    matched, classes = boxes.match(gt, labels, priors, iou_threshold=0.5, background=10)
    # Prior 0 is the first object exactly; prior 2 is the small object's best (IoU 0.25 < 0.5,
    # but forced); prior 1 overlaps nothing enough; prior 3 nothing at all. Padding never matches.
    np.testing.assert_array_equal(classes, [3, 10, 7, 10])
    np.testing.assert_allclose(matched[0], gt[0])
    np.testing.assert_allclose(matched[2], gt[1])


def numpy_nms(candidates, scores, iou_threshold, score_threshold):
    order = [i for i in np.argsort(-scores, kind="stable") if scores[i] > score_threshold]
    kept = []
    for i in order:
        if all(numpy_iou(candidates[[i]], candidates[[j]])[0, 0] <= iou_threshold for j in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_matches_greedy_numpy(seed):
    rng = np.random.default_rng(seed)
    candidates = random_boxes(rng, 40).astype(np.float32)
    scores = rng.random(40).astype(np.float32)
    order, keep = boxes.nms(candidates, scores, 0.45, 0.2, max_outputs=40)
    got = [int(i) for i, k in zip(np.asarray(order), np.asarray(keep), strict=True) if k]
    assert got == numpy_nms(candidates, scores, 0.45, 0.2)
    assert len(got) > 3
