"""SSD on 32×32 MNIST scenes, as the PyTorch tutorial (PhanHuyThong) built it, in one box frame.

- Base: three conv stages [1→16→32→64] of (3×3 conv, BatchNorm, ReLU)×2 with 2×2 max-pooling
  between them; feature maps are the last two stages' outputs (32@16², 64@8²).
- Auxiliary: two stages of (1×1 conv to half width, 3×3 stride-2 conv) with BatchNorm and ReLU
  (64@4², 64@2²).
- Heads: per map, instance normalisation (no affine) then 3×3 convs (fused into one) to 4 box
  offsets and 11 class logits (10 digits + background, index 10) per prior: 6, 7, 7, 7 priors
  per cell, 2,124 priors.
- Inputs are standardised per image ((x - mean) / std + 0.5) as the tutorial's dataset did.
- Loss: SSD matching (IoU ≥ 0.5, every object forced onto its best prior), L1 box loss averaged
  over positive coordinates, and 0.25 × cross-entropy over positives plus as many hard negatives,
  mined over the whole batch, divided by the number of positives.
- Detection, inside jit: softmax, per-class greedy NMS (score > 0.2, IoU > 0.45), fixed-size
  outputs with a validity mask.

One deliberate difference: the tutorial's boxes are (row, col) ordered while its priors are
(col, row) ordered, so it learned in a transposed frame. Here boxes and priors share the
`(ymin, xmin, ymax, xmax)` frame of `jvision.ops.boxes`, and a prior's aspect ratio is
height / width, which gives the priors the image-space shapes the tutorial's transposed frame gave
them (its ratio lists favour tall boxes, which suits digits).
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from jvision import summaries
from jvision.ops import boxes as box_ops
from jvision.ops import pooling, precision

NUM_DIGITS = 10
BACKGROUND = NUM_DIGITS  # Class index of "no object".


def conv(cin: int, cout: int, kernel: int, rngs: nnx.Rngs, stride: int = 1) -> nnx.Conv:
    """PyTorch's Conv2d(padding=kernel // 2): symmetric padding, so a stride-2 conv's outputs are
    centred on even input pixels ('SAME' would pad only after and centre them on odd ones)."""
    pad = kernel // 2
    return nnx.Conv(
        cin,
        cout,
        (kernel, kernel),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        kernel_init=nnx.initializers.xavier_uniform(),
        rngs=rngs,
    )


class ConvBNReLU(nnx.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, *, rngs: nnx.Rngs):
        self.conv = conv(cin, cout, kernel, rngs, stride)
        # PyTorch BatchNorm2d defaults: momentum 0.1 (Flax counts it the other way), eps 1e-5.
        self.norm = nnx.BatchNorm(cout, momentum=0.9, epsilon=1e-5, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.norm(self.conv(x)))


def instance_norm(x: jax.Array, epsilon: float = 1e-5) -> jax.Array:
    """Normalises each channel of each image over H, W (InstanceNorm2d without affine)."""
    mean = x.mean(axis=(1, 2), keepdims=True)
    variance = x.var(axis=(1, 2), keepdims=True)
    return (x - mean) * jax.lax.rsqrt(variance + epsilon)


def standardize(images: jax.Array) -> jax.Array:
    """(x - mean) / std + 0.5 per image, std unbiased as torch.std."""
    flat = images.reshape(images.shape[0], -1)
    mean = flat.mean(axis=1)[:, None, None, None]
    std = flat.std(axis=1, ddof=1)[:, None, None, None]
    return (images - mean) / jnp.maximum(std, 1e-6) + 0.5


class Head(nnx.Module):
    """A feature map's box offsets and class logits: the tutorial's two 3×3 convs as one.

    Both read the same map, so one conv with both sets of output channels computes the same thing
    in half the convolutions. Its kernel is initialised as the two convs would be (Xavier-uniform
    bounds depend on the output width), side by side.
    """

    def __init__(self, cin: int, priors: int, *, rngs: nnx.Rngs):
        self.priors = priors
        box, cls = conv(cin, priors * 4, 3, rngs), conv(cin, priors * (NUM_DIGITS + 1), 3, rngs)
        self.conv = conv(cin, priors * (4 + NUM_DIGITS + 1), 3, rngs)
        self.conv.kernel[...] = jnp.concatenate([box.kernel[...], cls.kernel[...]], axis=-1)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[B, H, W, C] -> offsets [B, H·W·priors, 4], logits [B, H·W·priors, 11]."""
        out = self.conv(x)
        boxes, classes = out[..., : self.priors * 4], out[..., self.priors * 4 :]
        return (
            boxes.reshape(x.shape[0], -1, 4),
            classes.reshape(x.shape[0], -1, NUM_DIGITS + 1),
        )


class SSD(nnx.Module):
    def __init__(
        self,
        base_widths: tuple[int, ...],
        aux_widths: tuple[int, ...],
        priors_per_cell: tuple[int, ...],
        *,
        rngs: nnx.Rngs,
    ):
        stages = []
        for cin, cout in zip(base_widths[:-1], base_widths[1:], strict=True):
            stages.append(
                nnx.List(
                    [
                        ConvBNReLU(cin, cout, 3, 1, rngs=rngs),
                        ConvBNReLU(cout, cout, 3, 1, rngs=rngs),
                    ]
                )
            )
        self.base = nnx.List(stages)
        self.aux = nnx.List(
            [
                nnx.List(
                    [
                        ConvBNReLU(cin, cin // 2, 1, 1, rngs=rngs),
                        ConvBNReLU(cin // 2, cout, 3, 2, rngs=rngs),
                    ]
                )
                for cin, cout in zip(aux_widths[:-1], aux_widths[1:], strict=True)
            ]
        )
        map_widths = (*base_widths[-2:], *aux_widths[1:])
        self.heads = nnx.List(
            [Head(c, n, rngs=rngs) for c, n in zip(map_widths, priors_per_cell, strict=True)]
        )

    def feature_maps(self, images: jax.Array) -> list[jax.Array]:
        x = standardize(images)
        maps = []
        for index, stage in enumerate(self.base):
            if index:
                x = pooling.max_pool(x, window=2, stride=2, padding=0)
            for layer in stage:
                x = layer(x)
            maps.append(x)
        maps = maps[-2:]
        for stage in self.aux:
            for layer in stage:
                x = layer(x)
            maps.append(x)
        return maps

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[B, 32, 32, 1] -> box offsets [B, P, 4] and class logits [B, P, 11]."""
        offsets, logits = [], []
        for x, head in zip(self.feature_maps(images), self.heads, strict=True):
            box_offsets, class_logits = head(instance_norm(x))
            offsets.append(box_offsets)
            logits.append(class_logits)
        outputs = jnp.concatenate(offsets, axis=1), jnp.concatenate(logits, axis=1)
        return precision.float32(outputs)  # Of any compute dtype (`model.dtype`).


class Detector(nnx.Module):
    """The network and its priors: centre boxes [P, 4] from the config's feature sizes, scales
    and aspect ratios, kept with the weights in the checkpoint."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        self.network = SSD(
            tuple(config.base_widths),
            tuple(config.aux_widths),
            tuple(len(r) + 1 for r in config.aspect_ratios),
            rngs=rngs,
        )
        self.priors = nnx.Variable(
            jnp.asarray(
                box_ops.ssd_priors(
                    tuple(config.feature_sizes),
                    tuple(config.prior_scales),
                    tuple(tuple(r) for r in config.aspect_ratios),
                )
            )
        )

    def __call__(self, images):
        return self.network(images)


def build(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> Detector:
    return Detector(config, rngs=rngs)


def _loss_terms(config, model: Detector, offsets, logits, gt_boxes, gt_labels):
    """`multibox_loss` with the config's matching and mining settings."""
    return multibox_loss(
        offsets,
        logits,
        gt_boxes,
        gt_labels,
        model.priors[...],
        float(config.iou_threshold),
        float(config.negatives_per_positive),
        float(config.class_weight),
    )


def top_n_sum(values: jax.Array, n: jax.Array, iterations: int = 40) -> jax.Array:
    """Sum of the `n` largest of non-negative `values` [N], n traced; gradient flows to them.

    Finds τ just below the n-th largest value by bisection (N comparisons per step, no sort: on
    XLA:CPU sorting the batch's 42k losses costs more than the rest of the loss), then sums the
    values above τ and corrects by τ for any extra value within the bisection's precision.
    """

    def halve(_, bounds):
        low, high = bounds
        middle = (low + high) / 2
        enough = jnp.sum(values > middle) >= n
        return jnp.where(enough, middle, low), jnp.where(enough, high, middle)

    # Invariant: at least n values exceed `low` and fewer than n exceed `high`, so `low`
    # converges to the n-th largest value from below.
    bounds = (jnp.full((), -1.0, values.dtype), jnp.max(values))
    threshold, _ = jax.lax.fori_loop(0, iterations, halve, bounds)
    threshold = jax.lax.stop_gradient(threshold)
    above = values > threshold
    return jnp.sum(jnp.where(above, values, 0.0)) + (n - above.sum()) * threshold


def multibox_loss(
    offsets: jax.Array,
    logits: jax.Array,
    gt_boxes: jax.Array,
    gt_labels: jax.Array,
    priors: jax.Array,
    iou_threshold: float,
    negatives_per_positive: float,
    class_weight: float,
    variances=(10.0, 5.0),
) -> dict[str, jax.Array]:
    """The tutorial's MultiBoxLoss.

    Args:
      offsets: [B, P, 4] predicted box offsets; logits: [B, P, 11].
      gt_boxes: [B, M, 4] corner boxes; gt_labels: [B, M] (-1 pads).
      priors: [P, 4] centre boxes.
    Returns:
      `loss` = `box_loss` + `class_loss`, and `num_positives`.
    """
    matched_boxes, classes = jax.vmap(
        functools.partial(box_ops.match, iou_threshold=iou_threshold, background=BACKGROUND),
        in_axes=(0, 0, None),
    )(gt_boxes, gt_labels, priors)
    positive = classes != BACKGROUND  # [B, P]
    num_positives = jnp.maximum(positive.sum(), 1)

    targets = box_ops.encode(matched_boxes, priors[None], variances)
    # Priors matched to nothing encode a padding box (log 0 = -inf): mask before, not after.
    errors = jnp.where(positive[..., None], jnp.abs(offsets - targets), 0.0)
    box_loss = jnp.sum(errors) / (4 * num_positives)

    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, classes)
    # Hard negatives: the largest losses among negatives over the whole batch.
    negatives = jnp.where(positive, 0.0, cross_entropy).ravel()
    num_hard = jnp.round(negatives_per_positive * num_positives)
    hard_negatives = top_n_sum(negatives, num_hard)
    positives = jnp.sum(jnp.where(positive, cross_entropy, 0.0))
    class_loss = class_weight * (positives + hard_negatives) / num_positives
    return {
        "loss": box_loss + class_loss,
        "box_loss": box_loss,
        "class_loss": class_loss,
        "num_positives": num_positives.astype(jnp.float32),
    }


def train_loss(config, model: Detector, batch, key, step):
    del key, step  # Deterministic, no schedules.
    offsets, logits = model(batch["image"])
    terms = _loss_terms(config, model, offsets, logits, batch["boxes"], batch["labels"])
    loss = terms.pop("loss")
    return loss, terms


def eval_metrics(config, model: Detector, batch, key, step):
    """Per-image loss terms (each image treated as its own batch), for a `mean_metrics` eval."""
    del key, step
    offsets, logits = model(batch["image"])

    def one(offsets, logits, boxes, labels):
        return _loss_terms(config, model, offsets[None], logits[None], boxes[None], labels[None])

    return jax.vmap(one)(offsets, logits, batch["boxes"], batch["labels"])


def detect(
    offsets: jax.Array,
    logits: jax.Array,
    priors: jax.Array,
    score_threshold: float,
    iou_threshold: float,
    max_per_class: int,
):
    """Per-class NMS for one image: offsets [P, 4], logits [P, 11] ->
    boxes [10·K, 4], scores [10·K], labels [10·K], valid [10·K] (K = max_per_class)."""
    boxes = box_ops.decode(offsets, priors)
    probabilities = jax.nn.softmax(logits, axis=-1)[:, :NUM_DIGITS]  # [P, 10]

    return box_ops.per_class_nms(
        boxes, probabilities.T, iou_threshold, score_threshold, max_per_class
    )


def predict(config, model: Detector, batch, step):
    """Detections for a batch of images [B, 32, 32, 1]: each field of `detect` with a leading
    batch axis. BatchNorm uses its running statistics whatever mode `model` is in."""
    del step
    model = nnx.view(model, use_running_average=True)
    offsets, logits = model(batch["image"])
    return jax.vmap(
        functools.partial(
            detect,
            priors=model.priors[...],
            score_threshold=float(config.score_threshold),
            iou_threshold=float(config.nms_iou_threshold),
            max_per_class=int(config.max_detections_per_class),
        )
    )(offsets, logits)


def image_summaries(config, model: Detector, batch, key, step):
    """Test scenes with their ground truth and detections (drawn by `draw_summaries`)."""
    del key
    return summaries.detection_outputs(batch, predict(config, model, batch, step))


SUMMARY_MIN_SCORE = 0.4  # As the tutorial's figures.


def draw_summaries(config, outputs):
    """Scenes ×4: ground truth boxes (green) and detections with score ≥ 0.4 (red), each labelled
    with its digit and its score in percent; 8 per row."""
    del config
    return {"detections": summaries.detection_rows(outputs, SUMMARY_MIN_SCORE)}
