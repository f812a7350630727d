"""State computed from data after training (e.g. the encoding detector's class exemplar bank).

A family that needs it defines `calibration_statistics(model, batch, step) -> {name: [B, ...]}`
(per-example arrays, inside jit) and `set_calibration(model, totals)` (writes its variables from
the statistics summed over the data); `config.calibration` names the data: a split and an
example maker (`jvision.data.triplets.MAKERS`). The trainer calibrates before every evaluation
and before the last checkpoint, so the final checkpoint holds the calibrated state; evaluating a
workdir (`jvision.evaluate`) calibrates its checkpoint the same way.
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jvision import models, sharding
from jvision.data import pipeline


class Calibration:
    def __init__(self, family, config: ml_collections.ConfigDict, mesh, graphdef, shardings):
        self.family, self.mesh, self.graphdef = family, mesh, graphdef
        self.data = pipeline.EvalData(
            config, config.calibration.split, examples=config.calibration.examples
        )

        def sums(model_state, batch, step):
            model = models.eval_model(graphdef, model_state)
            statistics = family.calibration_statistics(model, batch, step)
            return jax.tree.map(lambda v: jnp.tensordot(batch["mask"], v, axes=1), statistics)

        def apply(model_state, totals):
            model = nnx.merge(graphdef, model_state)
            family.set_calibration(model, totals)
            return nnx.state(model)

        self._sums = jax.jit(sums, out_shardings=sharding.replicated(mesh))
        self._apply = jax.jit(apply, out_shardings=shardings)

    def __call__(self, model_state, step: int):
        """The model state with its calibration recomputed from the data."""
        totals, step = None, jnp.int32(step)
        for batch in self.data:
            sums = self._sums(model_state, sharding.global_batch(self.mesh, batch), step)
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        return self._apply(model_state, totals)


def build(family, config: ml_collections.ConfigDict, mesh, graphdef, shardings):
    """The family's calibration when `config.calibration.examples` asks for one, else None."""
    if not config.calibration.examples:
        return None
    return Calibration(family, config, mesh, graphdef, shardings)
