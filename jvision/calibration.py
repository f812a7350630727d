"""State computed from data rather than trained (a family's `models.Calibration`, e.g. a class
exemplar bank), recomputed from the training split before every evaluation."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jvision import models
from jvision.data import pipeline
from jvision.over_batches import OverBatches, total


class Calibrator:
    """Recomputes a family's calibrated variables from the training split: the per-example
    statistics of `calibration.examples`, summed over the split (padding masked), then written
    by `calibration.apply`."""

    def __init__(self, calibration: models.Calibration, config, mesh, graphdef, shardings):
        self.graphdef = graphdef
        make = calibration.examples
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
        totals = total(self._sums(self.graphdef, model_state, self.data, step, "calibration"))
        return self._apply(model_state, totals)


def calibrator(family: models.Family, config, mesh, graphdef, shardings) -> Callable:
    """`(model_state, step) -> model_state` with the family's calibration applied (the state
    unchanged for families without one)."""
    if family.calibration is None:
        return lambda model_state, step: model_state
    return Calibrator(family.calibration, config, mesh, graphdef, shardings)
