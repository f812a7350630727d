"""pytlib's "encoding detector": a siamese cross-correlation detector with a class exemplar bank.

Idea (pytlib's README, after SiamFC, Bertinetto et al. 2016): one conv encoder φ, shared by an
exemplar branch and a search branch; sliding the exemplar's map φ(z) over a search image's map
φ(x) (cross-correlation) gives a response map that is high where the exemplar's class is. The
encoder is also a VAE's encoder, trained to reconstruct exemplars, so that φ(z) describes the
object rather than one crop of it. pytlib correlates one stored training exemplar; here a class is
represented by the **mean exemplar map over all its training exemplars** (the exemplar bank).

- Encoder: 3×3 convs without padding, strides `model.strides`, widths `model.widths`, a norm
  after each and ReLU between them (pytlib's conv stack). Both branches use the same map (pytlib
  ReLU'd the exemplar map only; the two branches differed). The norm: pytlib's BatchNorm
  (`model.norm="batch"`) normalises the exemplar, positive and negative batches each with their
  own statistics in training, while at detection one set of running statistics (a mix of the
  three) serves scenes and exemplars alike; measured on triplets in eval mode, every response
  then sits near 1 (positives 0.94-1.00, negatives 0.86). GroupNorm (`"group"`, 4 groups) has
  per-image statistics, the same in training and at detection.
- VAE on the exemplar: ReLU(φ(z)) flattened → bias-free linear μ, log σ² → z → bias-free linear
  → the mirrored transposed-conv stack (norms, ReLU between) → Bernoulli logits. Its loss is
  pytlib's: BCE averaged over pixels + KL divided by the pixel count.
- Responses: `gain · correlation + bias` with a learned scalar gain and bias (SiamFC's "adjust"
  layer), the gain starting at 1 / (exemplar cells × channels), i.e. the mean product. pytlib
  used the raw sums: over 5·5·128 products of unit-variance features they start in the
  thousands, the sigmoid saturates (BCE ≈ 60 after 100 steps, measured) and training crawls.
  `model.response_adjust=False` restores the raw sums.
- Loss: BCE-with-logits of the positive responses against their targets + of the negative
  responses against zeros (means over cells) + the VAE loss; each term is reported.
- Training examples: triplets made from the detection scenes (`train_examples`,
  `triplets.Triplets`).
- Exemplar bank: a `Calibrated` variable [classes, h, w, C] (declared at build time, so the
  checkpoint's tree is fixed), set by the family's `calibration` (`models.Calibration`: the
  statistics of every training object's exemplar crop, summed, then each class's mean map) before
  each evaluation and before the checkpoint of the final evaluation.
- Detection (`predict`): a scene padded by half an exemplar window is encoded once; the bank is
  correlated over it (one convolution with the bank as kernel, or FFTs) → a heat map per class,
  one cell per `jump` pixels, cell (i, j) comparing the exemplar-sized window centred on pixel
  (jump·i, jump·j). Peaks (3×3 local maxima above `score_threshold`) are detections; a peak's box
  is the extent of the region around it where the heat stays above `extent_fraction` × the peak,
  along its row and column: training labels a cell 1 exactly when its window centre lies inside
  an object of the class, so that region is the object's box (to one cell). Per-class NMS, then
  the SSD's output format, scored by the same VOC07 evaluator.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from jvision import models, summaries
from jvision.errors import UserError
from jvision.models.encoding_detector import triplets
from jvision.models.encoding_detector.network import NORMS, EncodingDetector
from jvision.ops import boxes as box_ops
from jvision.ops import correlation, distributions

HEAT_COLOR = (1.0, 0.2, 0.1)


def build(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> EncodingDetector:
    if config.correlation not in correlation.METHODS:
        raise UserError(
            f"model.correlation {config.correlation!r} is not one of {correlation.METHODS}"
        )
    if config.norm not in NORMS:
        raise UserError(f"model.norm {config.norm!r} is not one of {NORMS}")
    return EncodingDetector(
        config.channels,
        tuple(config.widths),
        tuple(config.strides),
        config.norm,
        config.exemplar_size,
        config.latent_size,
        config.num_classes,
        rngs=rngs,
    )


def train_loss(config, model: EncodingDetector, batch, key, step):
    del step
    exemplar_map = model.encoder(batch["exemplar"])

    def responses(search):
        sums = correlation.correlate(model.encoder(search), exemplar_map, config.correlation)
        return model.responses(sums, bool(config.response_adjust))

    positive, negative = responses(batch["search_positive"]), responses(batch["search_negative"])
    bce_positive = optax.sigmoid_binary_cross_entropy(positive, batch["target_positive"]).mean()
    bce_negative = optax.sigmoid_binary_cross_entropy(negative, jnp.zeros_like(negative)).mean()
    logits, mean, logvar = model.vae(exemplar_map, key)
    pixels = batch["exemplar"].size
    recon = optax.sigmoid_binary_cross_entropy(logits, batch["exemplar"]).mean()
    kl = distributions.gaussian_kl_standard_normal(mean, logvar).sum() / pixels
    loss = bce_positive + bce_negative + recon + kl
    return loss, {
        "bce_positive": bce_positive,
        "bce_negative": bce_negative,
        "vae_recon": recon,
        "vae_kl": kl,
    }


def calibration_statistics(config, model: EncodingDetector, batch, step):
    """Per scene: the sum of its objects' exemplar maps per class [B, classes, h, w, C] and how
    many there were [B, classes] (the trainer sums these over the training scenes)."""
    del step
    crops, labels = batch["exemplars"], batch["exemplar_labels"]  # [B, M, E, E, C], [B, M]
    maps = model.encoder(crops.reshape(-1, *crops.shape[2:])).reshape(*labels.shape, -1)
    onehot = jax.nn.one_hot(labels, model.num_classes)  # -1 pads: all zeros.
    sums = jnp.einsum("bmk,bmf->bkf", onehot, maps).reshape(
        labels.shape[0], model.num_classes, *model.map_shape
    )
    return {"sums": sums, "counts": onehot.sum(axis=1)}


def set_calibration(config, model: EncodingDetector, totals) -> None:
    """The exemplar bank: each class's mean exemplar map."""
    del config
    counts = totals["counts"]
    model.bank[...] = totals["sums"] / jnp.maximum(counts, 1)[:, None, None, None]
    model.bank_counts[...] = counts


def train_examples(config, source) -> models.ExampleMaker:
    """Training triplets made from the detection scenes of `source` (`triplets.Triplets`)."""
    return triplets.Triplets(source, config)


def exemplar_crops(config, source) -> models.ExampleMaker:
    """Every object of a scene as an exemplar crop, for the bank (`triplets.Exemplars`)."""
    return triplets.Exemplars(source, config)


calibration = models.Calibration(
    examples=exemplar_crops, statistics=calibration_statistics, apply=set_calibration
)


def _runs(above: jax.Array, index: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The first and last positions of the run of True in `above` [N] containing `index` (just
    `index` when it is False there)."""
    positions = jnp.arange(above.shape[0])
    gaps = ~above
    first = jnp.max(jnp.where(gaps & (positions < index), positions, -1)) + 1
    last = jnp.min(jnp.where(gaps & (positions > index), positions, above.shape[0])) - 1
    return jnp.minimum(first, index), jnp.maximum(last, index)


def decode(heat: jax.Array, jump: int, image_size: tuple[int, int], settings) -> dict:
    """One image's class heat maps [R, R', K] (probabilities) -> detections in the SSD's format:
    boxes [K·M, 4] (normalised), scores, labels, valid [K·M] (M = max detections per class)."""
    score_threshold, extent_fraction, nms_iou, max_per_class = settings
    height, width = image_size

    def peaks_and_boxes(probabilities):
        pooled = jax.lax.reduce_window(probabilities, -jnp.inf, jax.lax.max, (3, 3), (1, 1), "SAME")
        peaks = (probabilities >= pooled) & (probabilities > score_threshold)
        scores, flat = jax.lax.top_k(jnp.where(peaks, probabilities, -1.0).ravel(), max_per_class)
        rows, cols = flat // probabilities.shape[1], flat % probabilities.shape[1]

        def box(row, col, score):
            above = probabilities >= extent_fraction * score
            top, bottom = _runs(above[:, col], row)
            left, right = _runs(above[row, :], col)
            pixels = jnp.stack([top, left, bottom + 1, right + 1]) * jump - jump / 2
            return jnp.clip(pixels / jnp.array([height, width, height, width]), 0.0, 1.0)

        return jax.vmap(box)(rows, cols, scores), scores

    boxes, scores = jax.vmap(peaks_and_boxes, in_axes=2)(heat)  # [K, M, 4], [K, M]
    return box_ops.per_class_nms(boxes, scores, nms_iou, score_threshold, max_per_class)


def predict(config, model: EncodingDetector, batch, step):
    """Detections in whole scenes [B, H, W, C] (fields of `decode` with a batch axis) and the
    class heat maps `heat` [B, R, R', classes] (probabilities)."""
    del step
    if config.norm == "batch":  # Its running statistics, whatever mode `model` is in.
        model = nnx.view(model, use_running_average=True)
    images = batch["image"]
    logits = model.heat_logits(images, config.correlation, bool(config.response_adjust))
    heat = jax.nn.sigmoid(logits)
    jump, _ = correlation.stack_geometry(model.strides)
    settings = (
        float(config.score_threshold),
        float(config.extent_fraction),
        float(config.nms_iou_threshold),
        int(config.max_detections_per_class),
    )
    detections = jax.vmap(lambda h: decode(h, jump, images.shape[1:3], settings))(heat)
    return {**detections, "heat": heat}


def image_summaries(config, model: EncodingDetector, batch, key, step):
    """Test scenes with their detections and ground truth, and every class's heat map."""
    del key
    return summaries.detection_outputs(batch, predict(config, model, batch, step))


SUMMARY_MIN_SCORE = 0.4
SUMMARY_ROWS = 8


def draw_summaries(config, outputs):
    """`detections`: scenes (small ones enlarged) with ground truth (green) and detections with
    score ≥ 0.4 (red). `heatmaps`: per scene, the scene then each class's heat map over it (red)."""
    del config
    images = np.asarray(outputs["images"])
    rows = min(SUMMARY_ROWS, len(images))
    heat = np.asarray(outputs["heat"])[:rows]  # [N, R, R', K]: one cell per `jump` pixels.
    height, width = images.shape[1:3]
    rows_of = np.minimum(np.arange(height) * heat.shape[1] // height, heat.shape[1] - 1)
    cols_of = np.minimum(np.arange(width) * heat.shape[2] // width, heat.shape[2] - 1)
    heat = heat[:, rows_of][:, :, cols_of]  # Each pixel shows its nearest cell.
    gray = summaries.to_rgb(images[:rows])
    tint = np.asarray(HEAT_COLOR)
    overlays = [0.5 * gray + 0.5 * heat[..., k, None] * tint for k in range(heat.shape[-1])]
    return {
        "detections": summaries.detection_rows(outputs, SUMMARY_MIN_SCORE),
        "heatmaps": np.stack([gray, *overlays], axis=1),
    }
