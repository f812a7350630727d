"""A trained model run over data: the one evaluation loop and what is built on it.

- `OverBatches`: a family function of `(model, batch, step, index)`, the model in eval mode,
  jitted once per model graph and mapped over global batches; every evaluator, the calibration,
  the pictures and `jvision.evaluate` run their functions through it.
- `Calibrator`: a family's state computed from data (`models.Calibration`).
- `Pictures`: a family's `image_summaries` (jitted) drawn on the host by its `draw_summaries`.
- `Evaluation`: what the trainer and `jvision.evaluate` do at an evaluation: calibrate, run the
  configured evaluators (`jvision.evaluators`), draw the pictures.
"""

import functools
from collections.abc import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jvision import evaluators, models, sharding
from jvision.data import on_device, pipeline


class OverBatches:
    """`fn(model, batch, step, index)` over batches of host rows (`jvision.data.pipeline`).

    The model is `models.eval_model(graphdef, model_state)`; `index` counts the batches (0
    first), e.g. to fold into a key. `batches` may be an `EvalData` whose split is on the
    devices: its rows are then indices, turned into the batch inside jit (`arrays`,
    `materialize`). Outputs are replicated on every device (and process).
    """

    def __init__(self, fn: Callable, mesh: jax.sharding.Mesh):
        self.fn, self.mesh = fn, mesh
        self._jitted = {}  # By graphdef and materialize: a model state keeps its shardings.

    def _compiled(self, graphdef, materialize):
        if (graphdef, materialize) not in self._jitted:

            def run(model_state, arrays, inputs, step, index):
                batch = materialize(arrays, inputs, step)
                return self.fn(models.eval_model(graphdef, model_state), batch, step, index)

            compiled = jax.jit(run, out_shardings=sharding.replicated(self.mesh))
            self._jitted[graphdef, materialize] = compiled
        return self._jitted[graphdef, materialize]

    def __call__(self, graphdef, model_state, batches: Iterable[dict], step: int) -> Iterator:
        """The outputs of `fn` for each batch, in order (device arrays)."""
        arrays = getattr(batches, "arrays", {})
        materialize = getattr(batches, "materialize", on_device.as_given)
        compiled = self._compiled(graphdef, materialize)
        for index, batch in enumerate(batches):
            inputs = sharding.global_batch(self.mesh, batch)
            yield compiled(model_state, arrays, inputs, jnp.int32(step), jnp.int32(index))

    def first(self, graphdef, model_state, batch: dict, step: int):
        """The outputs of `fn` for one batch, as NumPy arrays."""
        return jax.device_get(next(self(graphdef, model_state, [batch], step)))


def total(outputs: Iterable):
    """The elementwise sum of a stream of pytrees."""
    return functools.reduce(lambda a, b: jax.tree.map(jnp.add, a, b), outputs)


class Calibrator:
    """Recomputes a family's calibrated variables from the training split: the per-example
    statistics of `calibration.examples`, summed over the split (padding masked), then written
    by `calibration.apply`."""

    def __init__(self, calibration: models.Calibration, config, mesh, graphdef, shardings):
        self.graphdef = graphdef
        make = models.bind(calibration.examples, config.model)
        self.data = pipeline.EvalData(config, config.data.train_split, examples=make)

        def sums(model, batch, step, index):
            del index
            statistics = calibration.statistics(model, batch, step)
            return jax.tree.map(lambda v: jnp.tensordot(batch["mask"], v, axes=1), statistics)

        def apply(model_state, totals):
            model = nnx.merge(graphdef, model_state)
            calibration.apply(model, totals)
            return nnx.state(model)

        self._sums = OverBatches(sums, mesh)
        self._apply = jax.jit(apply, out_shardings=shardings)

    def __call__(self, model_state, step: int):
        """`model_state` with its calibration recomputed."""
        totals = total(self._sums(self.graphdef, model_state, self.data, step))
        return self._apply(model_state, totals)


def calibrator(family: models.Family, config, mesh, graphdef, shardings) -> Callable:
    """`(model_state, step) -> model_state` with the family's calibration applied (the state
    unchanged for families without one)."""
    if family.calibration is None:
        return lambda model_state, step: model_state
    return Calibrator(family.calibration, config, mesh, graphdef, shardings)


class Pictures:
    """A family's pictures of the first `count` rows of a batch: `image_summaries` jitted (its
    key from `seed`), then `draw_summaries` on the host."""

    def __init__(self, family: models.Family, mesh, seed: int, count: int):
        key = jax.random.key(seed)

        def outputs(model, batch, step, index):
            del index
            batch = jax.tree.map(lambda x: x[:count], batch)
            return family.image_summaries(model, batch, key, step)

        self._outputs = OverBatches(outputs, mesh)
        self._draw = family.draw_summaries

    def __call__(self, graphdef, model_state, batch: dict, step: int) -> dict[str, np.ndarray]:
        """`{name: [rows, columns, H, W, C] floats in [0, 1]}`."""
        arrays = self._outputs.first(graphdef, model_state, batch, step)
        return {name: np.asarray(grid) for name, grid in self._draw(arrays).items()}


class Evaluation:
    """One evaluation of a model state: calibration, `config.evals`, and pictures of the first
    `config.num_summary_images` examples of `config.data.eval_split`."""

    def __init__(
        self, family: models.Family, config: ml_collections.ConfigDict, mesh, graphdef, shardings
    ):
        self.graphdef = graphdef
        self.calibrate = calibrator(family, config, mesh, graphdef, shardings)
        self.evaluators = evaluators.build(family, config, mesh)
        self.pictures = Pictures(family, mesh, config.seed, config.num_summary_images)
        self.summary_batch = pipeline.first_batch(config, config.data.eval_split)

    def metrics(self, model_state, step: int, final: bool = True) -> dict[str, float]:
        """The evaluators' metrics of a (calibrated) model state; `final_only` ones only when
        `final`."""
        results = {}
        for evaluator in self.evaluators:
            if final or not evaluator.final_only:
                results.update(evaluator.run(self.graphdef, model_state, step))
        return results

    def __call__(self, model_state, step: int, final: bool = True):
        """`(calibrated model state, metrics, pictures)`."""
        model_state = self.calibrate(model_state, step)
        results = self.metrics(model_state, step, final)
        pictures = self.pictures(self.graphdef, model_state, self.summary_batch, step)
        return model_state, results, pictures
