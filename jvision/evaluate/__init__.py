"""Evaluate any workdir, from the workdir alone: its config, model, metrics, pictures, predictions.

    run = jvision.evaluate.load("workdirs/vae_mnist")       # or gs://bucket/run; step=N
    run.config, run.step, run.model                          # the model in eval mode
    run.evaluate()                                           # == results.json for the final step
    run.images(n=16)                                         # {name: [rows, h, w, C] uint8}
    run.examples(n=8)                                        # test examples, as evaluated
    run.predict(images)                                      # e.g. SSD detections
    run.export()                                             # predict as a jax.export file
    evaluate.score_detections(run.predict(images), truth)    # VOC07 and COCO metrics of any

Only the model's variables are read (no optimizer state, no data iterator) and placed on every
available device, so a TPU pod's workdir opens on a laptop and the reverse. The config is the one
the checkpoint was written with; `overrides` change what is evaluated (another split, dataset or
`eval_batch_size`), never the model. The command line is `python -m jvision.evaluate`.
"""

import dataclasses
import functools
import logging
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from jvision import (
    calibration,
    config_overrides,
    config_saved,
    metrics,
    models,
    pictures,
    sharding,
    summaries,
    zoo,
)
from jvision.data import pipeline
from jvision.errors import UserError
from jvision.ops import coco_metrics, detection_metrics
from jvision.over_batches import OverBatches
from jvision.safety import files, reader

__all__ = ["Run", "load", "score_detections"]

log = logging.getLogger(__name__)

EXPORT_PLATFORMS = ("cpu", "cuda", "tpu")


@dataclasses.dataclass
class Run:
    """A trained model and everything needed to evaluate it; made by `load`."""

    workdir: epath.Path
    config: ml_collections.ConfigDict
    step: int
    family: models.Family
    model: nnx.Module
    mesh: jax.sharding.Mesh
    _fitting_shapes: set = dataclasses.field(default_factory=set, init=False, repr=False)

    @functools.cached_property
    def _split(self):
        return nnx.split(self.model)

    def _config(self, split: str | None, eval_batch_size: int | None = None):
        config = ml_collections.ConfigDict(self.config.to_dict())
        if split is not None:
            config.data.eval_split = split
            for eval_config in config.evals.values():
                eval_config.split = split
        if eval_batch_size is not None:
            config.eval_batch_size = eval_batch_size
        return config

    def evaluate(self, split: str | None = None, evals=None) -> dict[str, float]:
        """The family's evaluations (`config.evals`) of this checkpoint, on their configured
        splits or all on `split`; only those named in `evals` when given (e.g. `["test"]` leaves
        out a costly likelihood). For the final step and the training's eval batch size and
        devices, these are the numbers in `results.json`."""
        graphdef, state = self._split
        config = self._config(split)
        if evals is not None:
            unknown = sorted(set(evals) - set(config.evals))
            if unknown:
                raise UserError(
                    f"no evaluation {', '.join(unknown)}; this run's: {', '.join(config.evals)}"
                )
            config.evals = {name: config.evals[name] for name in evals}
        evaluators = metrics.build(self.family, config, self.mesh)
        return metrics.run_all(evaluators, graphdef, state, self.step)

    def image_grids(self, split: str | None = None, n: int | None = None) -> dict[str, np.ndarray]:
        """The family's pictures of the first `n` examples of `split` (default: as in training,
        the eval split's first `num_summary_images`): `{name: [rows, columns, H, W, C]}` floats in
        [0, 1]. `summaries.image_grid` tiles one as the trainer wrote it to `workdir/images`."""
        n = n or self.config.num_summary_images
        batch_size = _round_up(max(n, self.config.eval_batch_size), jax.device_count())
        config = self._config(split, batch_size)
        graphdef, state = self._split
        drawn = pictures.Pictures(self.family, self.mesh, config.seed, n)
        return drawn(
            graphdef, state, pipeline.first_batch(config, config.data.eval_split), self.step
        )

    def images(self, split: str | None = None, n: int | None = None) -> dict[str, np.ndarray]:
        """`image_grids`, each row of a grid as one picture: `{name: [rows, h, w, C]}` uint8."""
        return {
            name: summaries.grid_rows(grid) for name, grid in self.image_grids(split, n).items()
        }

    def examples(self, split: str | None = None, n: int = 16) -> dict[str, np.ndarray]:
        """The first `n` examples of `split` (default: the eval split) as the evaluations see them
        (decoded, binarized as configured): `{field: [n, ...]}` NumPy arrays."""
        config = self._config(split, _round_up(n, jax.device_count()))
        batch = next(iter(pipeline.EvalData(config, config.data.eval_split)))
        real = batch.pop("mask") > 0
        return {field: values[real][:n] for field, values in batch.items()}

    def predict(self, images) -> dict[str, np.ndarray]:
        """The family's `predict` for images [N, H, W, C] of floats in [0, 1] (any N), as NumPy
        arrays; what each family returns is in docs/outputs.md. Images of another shape, dtype
        or range than the model takes are refused with one line (`UserError`)."""
        images = _checked_images(images)
        self._check_shape(images.shape[1:])
        count = len(images)
        batch = pipeline.pad_batch({"image": images}, _round_up(count, jax.device_count()))
        outputs = self._predict.first(*self._split, batch, self.step)
        return jax.tree.map(lambda x: np.asarray(x)[:count], outputs)

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        """`UserError` when the model cannot take images of `shape` [H, W, C]."""
        if shape in self._fitting_shapes:
            return
        graphdef, state = self._split
        image = jax.ShapeDtypeStruct((jax.device_count(), *shape), np.float32)
        try:
            jax.eval_shape(
                lambda s, x: self.family.predict(models.eval_model(graphdef, s), {"image": x}, 0),
                state,
                image,
            )
        except Exception as error:  # Shapes that do not fit the model's layers.
            taken = list(self.examples(n=1)["image"].shape[1:])
            raise UserError(
                f"this model cannot take images of shape {list(shape)} (it was trained on "
                f"{taken}): {type(error).__name__}"
            ) from None
        self._fitting_shapes.add(shape)

    def image_shape(self) -> tuple[int, int, int]:
        """The [H, W, C] of the images the model takes: its config's `model.image_shape`, else
        that of the evaluation split's examples."""
        shape = self.config.model.get("image_shape")
        return tuple(shape) if shape else tuple(self.examples(n=1)["image"].shape[1:])

    def export(self, platforms: tuple[str, ...] = EXPORT_PLATFORMS) -> bytes:
        """`predict` with this model's weights, serialized by `jax.export`: a function of images
        [N, H, W, C] (float32 in [0, 1], N symbolic: any batch size) returning what `predict`
        returns, which a process with JAX alone runs (`jax.export.deserialize(data).call(x)`;
        docs/outputs.md). Lowered for each of `platforms`."""
        graphdef, state = self._split
        weights = jax.device_get(state)  # Constants of the exported program.

        def predict(images):
            # Behind a barrier the weights are values, not constants XLA would fold into the
            # layers (BatchNorm into its convolution, say), which would round otherwise.
            model = models.eval_model(graphdef, jax.lax.optimization_barrier(weights))
            return self.family.predict(model, {"image": images}, self.step)

        (batch,) = jax.export.symbolic_shape("batch")
        images = jax.ShapeDtypeStruct((batch, *self.image_shape()), np.float32)
        return bytes(jax.export.export(jax.jit(predict), platforms=platforms)(images).serialize())

    @functools.cached_property
    def _predict(self) -> OverBatches:
        def predict(model, batch, step, index):
            del index
            return self.family.predict(model, batch, step)

        return OverBatches(predict, self.mesh)


def score_detections(
    predictions: dict,
    ground_truth: dict,
    num_classes: int = 10,
    iou_threshold: float = 0.5,
    image_size: tuple[int, int] | None = None,
) -> dict[str, float]:
    """The detection metrics of any detections, as the `detection_map` metric reports them:
    VOC07's `mAP` and `AP_<class>` (`jvision.ops.detection_metrics.score`, which says what the
    arrays hold), and COCO's (`coco_AP`, ..., `jvision.ops.coco_metrics`) when the images' size
    in pixels is known: `image_size` (H, W), or the shape of `ground_truth["image"]`."""
    scores = detection_metrics.score(predictions, ground_truth, num_classes, iou_threshold)
    if image_size is None and "image" in ground_truth:
        image_size = np.shape(ground_truth["image"])[1:3]
    if image_size is not None:
        scores.update(coco_metrics.score(predictions, ground_truth, image_size, num_classes))
    return scores


def _checked_images(images) -> np.ndarray:
    """Images as float32 [N, H, W, C] in [0, 1], or `UserError` saying what is wrong."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise UserError(f"predict takes images [N, H, W, C]; got shape {list(images.shape)}")
    if not (np.issubdtype(images.dtype, np.floating) or images.dtype == np.bool_):
        raise UserError(
            f"predict takes float images in [0, 1]; got {images.dtype} (divide uint8 pixels by 255)"
        )
    images = images.astype(np.float32)
    if not np.isfinite(images).all():
        raise UserError("predict takes finite images; these hold NaN or infinity")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1:
        hint = " (divide 0-255 pixels by 255)" if high > 1 else ""
        raise UserError(f"predict takes images in [0, 1]; these span [{low:g}, {high:g}]{hint}")
    return images


def _round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple


def load(
    workdir: str | epath.PathLike,
    step: int | None = None,
    overrides: dict | None = None,
    weights: str = "averaged",
) -> Run:
    """Rebuilds the model of `workdir`'s checkpoint `step` (default: the latest).

    Args:
      workdir: a run's directory, local or `gs://…`.
      step: which kept checkpoint.
      overrides: dotted config keys to change for evaluation, e.g. `{"data.name": "mnist",
        "eval_batch_size": 100}`; values may be strings (parsed as the key's type).
      weights: for a run with parameter EMA (`ema.decay` > 0), "averaged" (the averaged
        parameters, as its evaluations used by default) or "live" (the parameters trained);
        without EMA both are the trained ones.
    Raises:
      UserError: no checkpoint, no such step, an unknown model, a bad override.
    """
    workdir = zoo.resolve(workdir) or files.path(workdir)
    overrides = dict(overrides or {})
    fixed = sorted(k for k in overrides if k == "model" or k.startswith("model."))
    if fixed:
        raise UserError(
            f"{', '.join(fixed)} cannot change at evaluation: the checkpoint fixes the model"
        )
    mesh = sharding.make_mesh()  # Data-parallel over this machine's devices.
    replicated = sharding.replicated(mesh)

    def model_of(meta: dict) -> nnx.Module:
        """The checkpoint's model, abstract, each array to be read onto every device."""
        config = _config_of(meta, overrides)
        family = models.get(config.model)
        abstract = nnx.eval_shape(lambda: family.build(nnx.Rngs(config.seed)))
        graphdef, state = nnx.split(abstract)
        placed = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), state
        )
        return nnx.merge(graphdef, placed)

    model, meta = reader.read_model(workdir, model_of, step, weights)
    config = _config_of(meta, overrides)
    family = models.get(config.model)
    if config.eval_batch_size % jax.device_count():  # Padding rows are masked: same metrics.
        config.eval_batch_size = _round_up(config.eval_batch_size, jax.device_count())
        log.info("eval_batch_size rounded up to %d", config.eval_batch_size)
    graphdef, state = nnx.split(model)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    if not meta.get("calibrated"):  # A zoo entry's state computed from data is stored.
        calibrate = calibration.calibrator(family, config, mesh, graphdef, shardings)
        state = calibrate(state, meta["step"])  # As the trainer evaluates it.
    model = nnx.merge(graphdef, state)
    model.eval()
    return Run(workdir, config, meta["step"], family, model, mesh)


def _config_of(meta: dict, overrides: dict) -> ml_collections.ConfigDict:
    """The config a checkpoint was written with, keys added since at their defaults, with the
    evaluation's `overrides`."""
    config = config_saved.from_saved(meta["config"])
    config_overrides.apply_overrides(config, overrides)
    return config


def rescore(workdir: str | epath.PathLike, split: str, evals: tuple[str, ...]) -> dict:
    """The evaluations `evals` (names in the run's `config.evals`) of `workdir`'s model on
    `split`, computed in float64: the model's float32 weights widened, the images float32 as
    stored, every operation in float64. Different CPUs round float32 differently (their last
    digits differ); in float64 they agree to ~1e-12 relative, so a change in a model's numbers is
    told apart from a CPU's rounding: the model zoo's cards record these, and the tests
    recompute them on every CPU."""
    with jax.enable_x64(True):
        run = load(workdir)
        graphdef, state = run._split
        state = jax.tree.map(
            lambda x: x.astype(np.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, state
        )
        widened = dataclasses.replace(run, model=nnx.merge(graphdef, state))
        return widened.evaluate(split, evals)
