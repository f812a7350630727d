"""SSD: network shapes, MultiBoxLoss against NumPy, hard-negative mining, detection outputs."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from helpers import built, float64, load_config, model_to_float64

from jvision import models
from jvision.models import ssd
from jvision.ops import boxes as box_ops

CONFIG = load_config("ssd_mnist", None).model


def _model():
    return built(ssd.build, CONFIG)


@nnx.jit
def _forward(model, images):
    return model(images)


@nnx.jit
def _loss_terms(model, offsets, logits, boxes, labels):
    return ssd._loss_terms(CONFIG, model, offsets, logits, boxes, labels)


@nnx.jit
def _loss_gradient(model, offsets, logits, boxes, labels):
    """The gradient of the loss with respect to the box offsets."""
    loss = lambda o: ssd._loss_terms(CONFIG, model, o, logits, boxes, labels)["loss"]  # noqa: E731
    return jax.grad(loss)(offsets)


def _batch(batch=2):
    rng = np.random.default_rng(0)
    gt_boxes = np.zeros((batch, 4, 4), np.float32)
    gt_boxes[:, 0] = [0.1, 0.1, 0.5, 0.4]
    gt_boxes[:, 1] = [0.5, 0.55, 0.95, 0.85]
    labels = np.array([[1, 7, -1, -1]] * batch, np.int32)
    return {
        "image": rng.random((batch, 32, 32, 1)).astype(np.float32),
        "boxes": gt_boxes,
        "labels": labels,
    }


def test_network_outputs_one_row_per_prior():
    model = _model()
    offsets, logits = _forward(model, jnp.zeros((3, 32, 32, 1)) + 0.3)
    assert model.priors.shape == (2124, 4)
    assert offsets.shape == (3, 2124, 4) and logits.shape == (3, 2124, 11)


def test_stride_two_convs_are_centred_like_pytorch_padding_one():
    layer = ssd.conv(1, 1, 3, nnx.Rngs(0), stride=2)
    layer.kernel[...] = jnp.zeros((3, 3, 1, 1)).at[1, 1].set(1.0)  # Picks the centre pixel.
    x = jnp.arange(64.0).reshape(1, 8, 8, 1)
    np.testing.assert_array_equal(layer(x), x[:, ::2, ::2])  # Centres on pixels 0, 2, 4, 6.


def test_fused_head_equals_separate_box_and_class_convs():
    head = ssd.Head(8, 3, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 8))
    with float64():  # So that the bound follows from float64 rounding, not one CPU's float32.
        model_to_float64(head)
        x = jnp.asarray(x, jnp.float64)
        kernel, bias = head.conv.kernel[...], head.conv.bias[...]

        def conv(k, b):
            dims = ("NHWC", "HWIO", "NHWC")
            return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=dims) + b

        fused = [np.asarray(v) for v in head(x)]
        separate = [
            np.asarray(conv(kernel[..., :12], bias[:12]).reshape(2, -1, 4)),
            np.asarray(conv(kernel[..., 12:], bias[12:]).reshape(2, -1, 11)),
        ]
        kernel = np.asarray(kernel)
    # Each output sums 3·3·8 = 72 products and a bias, Σ|terms| ≤ 5·max|output| here: two orders
    # differ by ≤ 2·73·u·5·max ≈ 1e-13·max (u = 2⁻⁵³). A swapped or shifted channel block moves
    # outputs by O(max).
    for got, expected in zip(fused, separate, strict=True):
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * np.abs(expected).max())
    # Each part is initialised with its own conv's Xavier bound: sqrt(6 / (fan_in + fan_out)).
    box_bound, class_bound = (np.sqrt(6 / (9 * 8 + 9 * n)) for n in (12, 33))
    assert box_bound * 0.8 < np.abs(kernel[..., :12]).max() <= box_bound
    assert class_bound * 0.8 < np.abs(kernel[..., 12:]).max() <= class_bound


def test_standardize_matches_torch_convention():
    x = np.random.default_rng(1).random((2, 4, 4, 1))
    flat = x.reshape(2, -1)
    expected = (flat - flat.mean(1, keepdims=True)) / flat.std(1, ddof=1, keepdims=True) + 0.5
    with float64():
        got = np.asarray(ssd.standardize(jnp.asarray(x))).reshape(2, -1)
    # In float64 on both sides: mean and std sum 16 terms (≤ 16·u relative, u = 2⁻⁵³), and
    # |(x - mean)/std| ≤ 4: ≤ 1e-14 absolute on values of O(1). The biased std (ddof 0) would be
    # off by 3% (√(16/15)).
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def numpy_multibox(offsets, logits, targets, classes):
    positive = classes != ssd.BACKGROUND
    n_pos = positive.sum()
    box_loss = np.abs(offsets - targets)[positive].sum() / (4 * n_pos)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_probs, classes[..., None], -1)[..., 0]
    hardest = np.sort(ce[~positive])[::-1][:n_pos]  # Over the whole batch.
    class_loss = 0.25 * (ce[positive].sum() + hardest.sum()) / n_pos
    return box_loss, class_loss, n_pos


def test_multibox_loss_matches_numpy():
    model = _model()
    batch = _batch()
    rng = np.random.default_rng(2)
    offsets = rng.normal(size=(2, 2124, 4))
    logits = rng.normal(size=(2, 2124, 11)) * 2
    boxes = batch["boxes"].astype(np.float64)
    with float64():  # Priors too: `ssd_priors`' float32 values, exactly, as float64.
        model_to_float64(model)
        terms = _loss_terms(model, offsets, logits, boxes, batch["labels"])
        terms = {name: np.asarray(value) for name, value in terms.items()}
        priors = np.asarray(model.priors[...])
        match = jax.vmap(lambda b, lab: box_ops.match(b, lab, priors, 0.5, ssd.BACKGROUND))
        matched, classes = jax.jit(match)(boxes, batch["labels"])
        targets = np.asarray(jax.jit(box_ops.encode)(matched, priors[None]))
    assert terms["loss"].dtype == targets.dtype == priors.dtype == np.float64
    box_loss, class_loss, n_pos = numpy_multibox(offsets, logits, targets, np.asarray(classes))
    assert n_pos >= 4  # Two objects per image, each forced onto at least one prior.
    np.testing.assert_allclose(terms["num_positives"], n_pos)
    # Both losses sum ≤ 2·2124·4 non-negative terms (≤ 17k·u ≈ 2e-12 relative, u = 2⁻⁵³), each
    # a log-sum-exp of logits ≤ 10 (a few u·10); `top_n_sum`'s 40 bisection steps leave the
    # n-th largest loss within (max + 1)·2⁻⁴⁰ ≈ 1e-11 (absolute, of one term at most: the losses
    # are distinct), against class losses of ~1. RTOL = 1e-10; a missed negative, a wrong
    # count of hard negatives or a mis-weighted term moves a loss by ≥ 1e-3 of itself.
    np.testing.assert_allclose(terms["box_loss"], box_loss, rtol=1e-10)
    np.testing.assert_allclose(terms["class_loss"], class_loss, rtol=1e-10)
    np.testing.assert_allclose(terms["loss"], box_loss + class_loss, rtol=1e-10)


def test_hard_negative_mining_takes_one_negative_per_positive():
    model = _model()
    batch = _batch(1)
    logits = np.zeros((1, 2124, 11))
    match = jax.jit(box_ops.match, static_argnums=(3, 4))
    _, classes = match(batch["boxes"][0], batch["labels"][0], model.priors[...], 0.5, 10)
    negatives = np.flatnonzero(np.asarray(classes) == ssd.BACKGROUND)
    n_pos = 2124 - len(negatives)
    # Make 3·n_pos negatives confidently wrong; only n_pos of them may count.
    logits[0, negatives[: 3 * n_pos], 0] = 20.0
    with float64():
        model_to_float64(model)
        class_loss = _loss_terms(
            model,
            np.zeros((1, 2124, 4)),
            logits,
            batch["boxes"].astype(np.float64),
            batch["labels"],
        )["class_loss"]
        class_loss = np.asarray(class_loss)
    ce_wrong = 20.0 + np.log(1 + 10 * np.exp(-20.0))
    expected = 0.25 * (n_pos * np.log(11) + n_pos * ce_wrong) / n_pos
    # In float64: the 3·n_pos tied hardest losses leave `top_n_sum`'s threshold τ within
    # (20 + 1)·2⁻⁴⁰ below them, and it counts 2·n_pos of them at τ: the class loss is off by
    # ≤ 0.25·2·21·2⁻⁴⁰ ≈ 1e-11 of its ≈ 5.6, plus the sums' rounding (≤ 2124·u relative).
    # RTOL = 1e-10; counting one extra hard negative would add 20/(4·n_pos) ≥ 0.1.
    assert class_loss.dtype == np.float64
    np.testing.assert_allclose(class_loss, expected, rtol=1e-10)


def test_predict_returns_fixed_size_per_class_detections():
    model = _model()  # In training mode: predict must use the BatchNorm statistics anyway.
    family = models.get(CONFIG)
    predict = nnx.jit(family.predict)
    detections = predict(model, _batch(2), 0)
    model.eval()
    eval_mode = predict(model, _batch(2), 0)
    for name in detections:
        np.testing.assert_array_equal(detections[name], eval_mode[name])
    k = 10 * CONFIG.max_detections_per_class
    assert detections["boxes"].shape == (2, k, 4)
    assert detections["scores"].shape == detections["labels"].shape == (2, k)
    assert detections["valid"].dtype == jnp.bool_
    outputs = jax.device_get(nnx.jit(family.image_summaries)(model, _batch(2), None, 0))
    grids = family.draw_summaries(outputs)
    assert grids["detections"].shape == (1, 2, 128, 128, 3)  # The 2 scenes, ×4, one row.


def test_detect_keeps_the_confident_boxes_of_each_class_after_nms():
    """Three priors say "3" (two of them overlapping: NMS keeps the likelier), one says "5",
    the rest background: the valid detections are exactly those, with NumPy's softmax scores
    and boxes decoded by hand (centre += offset·size/10, size *= exp(offset/5))."""
    priors = np.array(
        [[0.3, 0.3, 0.2, 0.2], [0.31, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.3], [0.5, 0.5, 0.4, 0.4]],
        np.float32,
    )  # Centre boxes (cy, cx, h, w).
    offsets = np.array([[1, -1, 0.5, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], np.float32)
    logits = np.full((4, 11), -4.0, np.float32)
    logits[:, ssd.BACKGROUND] = 4.0
    logits[0, 3], logits[1, 3], logits[2, 5] = 6.0, 5.0, 5.5
    detected = ssd.detect(
        jnp.asarray(offsets), jnp.asarray(logits), jnp.asarray(priors), 0.2, 0.45, 2
    )
    boxes, scores, labels, valid = (
        np.asarray(detected[k]) for k in ("boxes", "scores", "labels", "valid")
    )
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    centre = priors[:, :2] + offsets[:, :2] * priors[:, 2:] / 10
    size = priors[:, 2:] * np.exp(offsets[:, 2:] / 5)
    corners = np.concatenate([centre - size / 2, centre + size / 2], axis=-1)
    found = sorted(
        (int(label), round(float(score), 5), tuple(np.round(box, 5)))
        for box, score, label in zip(boxes[valid], scores[valid], labels[valid], strict=True)
    )
    expected = sorted(
        (c, round(float(probabilities[p, c]), 5), tuple(np.round(corners[p], 5)))
        for p, c in ((0, 3), (2, 5))
    )
    assert found == expected


def test_top_n_sum_matches_sorting_and_its_gradient_selects_the_top():
    rng = np.random.default_rng(3)
    values = rng.exponential(size=5000)
    values[:100] = 0.0
    # In float64: 40 bisection steps find τ within ε = (max + 1)·2⁻⁴⁰ ≈ 9e-12 below the n-th
    # largest value, and values in (τ, n-th largest] beyond the n-th are counted at τ: an error
    # ≤ ε per such value, at most one here (the positive values are distinct; for n = 0 it is
    # the maximum). The sum of ≤ 5000 non-negative values rounds by ≤ 5000·u ≈ 6e-13 relative.
    # A value too many or too few is off by ≥ 1e-4 (the smallest positive value).
    atol = 2 * (values.max() + 1) * 2.0**-40
    for n in (0, 1, 37, 4900, 5000):
        expected = np.sort(values)[::-1][:n].sum()
        with float64():
            got = np.asarray(ssd.top_n_sum(jnp.asarray(values), n))
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=atol)
    grad = np.asarray(jax.grad(lambda v: ssd.top_n_sum(v, 37))(jnp.asarray(values)))
    top = np.argsort(-values)[:37]
    assert grad[top].min() == 1 and grad.sum() == 37


def test_a_scene_without_objects_has_a_finite_loss():
    model = _model()
    batch = _batch(2)
    batch["labels"][1] = -1  # The second scene is empty.
    offsets, logits = _forward(model, batch["image"])
    terms = _loss_terms(model, offsets, logits, batch["boxes"], batch["labels"])
    assert all(np.isfinite(float(v)) for v in terms.values())
    grads = _loss_gradient(model, offsets, logits, batch["boxes"], batch["labels"])
    assert np.isfinite(np.asarray(grads)).all()
