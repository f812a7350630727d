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
  `jvision.data.triplets.Triplets`).
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

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from jvision import models, summaries
from jvision.data import triplets
from jvision.errors import UserError
from jvision.ops import boxes as box_ops
from jvision.ops import conv_transpose, correlation, distributions, precision

HEAT_COLOR = (1.0, 0.2, 0.1)


class Calibrated(nnx.Variable):
    """State computed from data after training (not trained by the optimizer)."""


NORMS = ("batch", "group")
GROUPS = 4


def norm_layer(kind: str, channels: int, rngs: nnx.Rngs) -> nnx.Module:
    """pytlib's BatchNorm (PyTorch defaults: momentum 0.1, which Flax counts the other way, eps
    1e-5), or GroupNorm (statistics per example: the same at training and at inference)."""
    if kind == "batch":
        return nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, rngs=rngs)
    return nnx.GroupNorm(channels, num_groups=min(GROUPS, channels), epsilon=1e-5, rngs=rngs)


class Encoder(nnx.Module):
    """[B, H, W, C] -> [B, h, w, widths[-1]]: valid 3×3 convs, each normalised, ReLU between."""

    def __init__(self, channels: int, widths, strides, norm: str, *, rngs: nnx.Rngs):
        cins = (channels, *widths[:-1])
        self.convs = nnx.List(
            [
                nnx.Conv(ci, co, (3, 3), strides=s, padding="VALID", rngs=rngs)
                for ci, co, s in zip(cins, widths, strides, strict=True)
            ]
        )
        self.norms = nnx.List([norm_layer(norm, co, rngs) for co in widths])

    def __call__(self, x: jax.Array) -> jax.Array:
        for index, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = norm(conv(x))
            if index < len(self.convs) - 1:
                x = jax.nn.relu(x)
        return x


def _sizes(size: int, strides) -> list[int]:
    sizes = [size]
    for stride in strides:
        sizes.append((sizes[-1] - 3) // stride + 1)
    return sizes


class Decoder(nnx.Module):
    """The encoder mirrored with transposed convs, each layer landing on the encoder's size (the
    role of PyTorch's output_padding); the norm after every layer (pytlib's BatchNorm), ReLU
    between. With GroupNorm the last layer has none: per-image statistics of a 1-channel output
    would pin every reconstruction's logits to one mean and spread."""

    def __init__(
        self, channels: int, widths, strides, image_size: int, norm: str, *, rngs: nnx.Rngs
    ):
        sizes = _sizes(image_size, strides)  # Encoder sizes, input first.
        couts = (channels, *widths[:-1])  # Layer i of the encoder maps couts[i] -> widths[i].
        layers = []
        for index in reversed(range(len(strides))):
            produced = (sizes[index + 1] - 1) * strides[index] + 3
            extra = sizes[index] - produced  # 0 or 1.
            padding = ((2, 2 + extra), (2, 2 + extra))
            layers.append(
                conv_transpose.ConvTranspose(
                    widths[index],
                    couts[index],
                    (3, 3),
                    strides=strides[index],
                    padding=padding,
                    rngs=rngs,
                )
            )
        self.layers = nnx.List(layers)
        normed = layers if norm == "batch" else layers[:-1]
        self.norms = nnx.List([norm_layer(norm, layer.out_features, rngs) for layer in normed])

    def __call__(self, x: jax.Array) -> jax.Array:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.norms):
                x = self.norms[index](x)
            if index < len(self.layers) - 1:
                x = jax.nn.relu(x)
        return x


class EncodingDetector(nnx.Module):
    def __init__(self, model_config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        widths, strides = tuple(model_config.widths), tuple(model_config.strides)
        channels = model_config.channels
        self.exemplar_size = model_config.exemplar_size
        self.strides = strides
        self.correlation = model_config.correlation
        if self.correlation not in correlation.METHODS:
            raise UserError(
                f"model.correlation {self.correlation!r} is not one of {correlation.METHODS}"
            )
        self.num_classes = model_config.num_classes
        self.score_threshold = float(model_config.score_threshold)
        self.extent_fraction = float(model_config.extent_fraction)
        self.nms_iou_threshold = float(model_config.nms_iou_threshold)
        self.max_detections_per_class = int(model_config.max_detections_per_class)
        cells = correlation.feature_size(self.exemplar_size, strides)
        self.map_shape = (cells, cells, widths[-1])
        features = cells * cells * widths[-1]
        linear = functools.partial(nnx.Linear, use_bias=False, rngs=rngs)
        self.norm = norm = model_config.get("norm", "batch")
        if norm not in NORMS:
            raise UserError(f"model.norm {norm!r} is not one of {NORMS}")
        self.encoder = Encoder(channels, widths, strides, norm, rngs=rngs)
        self.to_mean = linear(features, model_config.latent_size)
        self.to_logvar = linear(features, model_config.latent_size)
        self.expand = linear(model_config.latent_size, features)
        self.decoder = Decoder(channels, widths, strides, self.exemplar_size, norm, rngs=rngs)
        self.response_adjust = bool(model_config.response_adjust)
        self.response_gain = nnx.Param(jnp.float32(1.0 / features))
        self.response_bias = nnx.Param(jnp.float32(0.0))
        self.bank = Calibrated(jnp.zeros((self.num_classes, *self.map_shape)))
        self.bank_counts = Calibrated(jnp.zeros((self.num_classes,)))

    def vae(self, exemplar_map: jax.Array, key: jax.Array | None):
        """Reconstruction logits of exemplars from their maps; z is the mean when key is None."""
        flat = jax.nn.relu(exemplar_map).reshape(exemplar_map.shape[0], -1)
        mean, logvar = precision.float32((self.to_mean(flat), self.to_logvar(flat)))
        z = mean if key is None else distributions.reparameterized_sample(key, mean, logvar)
        hidden = jax.nn.relu(self.expand(z)).reshape(-1, *self.map_shape)
        return precision.float32(self.decoder(hidden)), mean, logvar

    def responses(self, correlations: jax.Array) -> jax.Array:
        """Response logits from correlation sums."""
        if not self.response_adjust:
            return correlations
        return self.response_gain[...] * correlations + self.response_bias[...]

    def padding(self) -> int:
        """Pixels added around a scene so every pixel can be a window centre."""
        jump, field = correlation.stack_geometry(self.strides)
        extent = jump * (self.map_shape[0] - 1) + field
        return (extent - 1) // 2

    def heat_logits(self, images: jax.Array) -> jax.Array:
        """Scenes [B, H, W, C] -> per-class response logits [B, R, R', classes]; cell (i, j)
        compares the window centred on pixel (jump·i, jump·j)."""
        pad = self.padding()
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        sums = correlation.correlate_bank(self.encoder(padded), self.bank[...], self.correlation)
        return self.responses(sums)


def build(model_config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> EncodingDetector:
    return EncodingDetector(model_config, rngs=rngs)


def train_loss(model: EncodingDetector, batch, key, step):
    del step
    exemplar_map = model.encoder(batch["exemplar"])

    def responses(search):
        sums = correlation.correlate(model.encoder(search), exemplar_map, model.correlation)
        return model.responses(sums)

    positive, negative = responses(batch["search_positive"]), responses(batch["search_negative"])
    bce_positive = optax.sigmoid_binary_cross_entropy(positive, batch["target_positive"]).mean()
    bce_negative = optax.sigmoid_binary_cross_entropy(negative, jnp.zeros_like(negative)).mean()
    logits, mean, logvar = model.vae(exemplar_map, key)
    pixels = batch["exemplar"].size
    recon = optax.sigmoid_binary_cross_entropy(logits, batch["exemplar"]).mean()
    kl = distributions.gaussian_kl_standard_normal(mean, logvar).sum() / pixels
    loss = bce_positive + bce_negative + recon + kl
    return loss, {
        "loss": loss,
        "bce_positive": bce_positive,
        "bce_negative": bce_negative,
        "vae_recon": recon,
        "vae_kl": kl,
    }


def calibration_statistics(model: EncodingDetector, batch, step):
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


def set_calibration(model: EncodingDetector, totals) -> None:
    """The exemplar bank: each class's mean exemplar map."""
    counts = totals["counts"]
    model.bank[...] = totals["sums"] / jnp.maximum(counts, 1)[:, None, None, None]
    model.bank_counts[...] = counts


train_examples = triplets.Triplets
calibration = models.Calibration(
    examples=triplets.Exemplars, statistics=calibration_statistics, apply=set_calibration
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


def predict(model: EncodingDetector, batch, step=None):
    """Detections in whole scenes [B, H, W, C] (fields of `decode` with a batch axis) and the
    class heat maps `heat` [B, R, R', classes] (probabilities)."""
    del step
    if model.norm == "batch":  # Its running statistics, whatever mode `model` is in.
        model = nnx.view(model, use_running_average=True)
    images = batch["image"]
    heat = jax.nn.sigmoid(model.heat_logits(images))
    jump, _ = correlation.stack_geometry(model.strides)
    settings = (
        model.score_threshold,
        model.extent_fraction,
        model.nms_iou_threshold,
        model.max_detections_per_class,
    )
    detections = jax.vmap(lambda h: decode(h, jump, images.shape[1:3], settings))(heat)
    return {**detections, "heat": heat}


def image_summaries(model: EncodingDetector, batch, key, step):
    """Test scenes with their detections and ground truth, and every class's heat map."""
    del key
    return summaries.detection_outputs(batch, predict(model, batch, step))


SUMMARY_MIN_SCORE = 0.4
SUMMARY_ROWS = 8


def draw_summaries(outputs):
    """`detections`: scenes (small ones enlarged) with ground truth (green) and detections with
    score ≥ 0.4 (red). `heatmaps`: per scene, the scene then each class's heat map over it (red)."""
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
