"""A family function run over a split's batches: the one evaluation loop.

`OverBatches` jits `fn(model, batch, step, index)` (the model in eval mode) once per model graph
and maps it over global batches; every metric (`jvision.metrics`), the calibration, the pictures
and `jvision.evaluate` run their functions through it.
"""

import functools
from collections.abc import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp

from jvision import logs, models, sharding
from jvision.data import on_device


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

    def __call__(
        self, graphdef, model_state, batches: Iterable[dict], step: int, progress: str = ""
    ) -> Iterator:
        """The outputs of `fn` for each batch, in order (device arrays). With `progress` (a
        name), an evaluation that takes long reports how far it is (`logs.BatchProgress`)."""
        arrays = getattr(batches, "arrays", {})
        materialize = getattr(batches, "materialize", on_device.as_given)
        compiled = self._compiled(graphdef, materialize)
        report = logs.BatchProgress(progress, len(batches)) if progress else None
        for index, batch in enumerate(batches):
            inputs = sharding.global_batch(self.mesh, batch)
            output = compiled(model_state, arrays, inputs, jnp.int32(step), jnp.int32(index))
            if report is not None:
                report(index + 1, lambda output=output: jax.block_until_ready(output))
            yield output

    def first(self, graphdef, model_state, batch: dict, step: int):
        """The outputs of `fn` for one batch, as NumPy arrays."""
        return jax.device_get(next(self(graphdef, model_state, [batch], step)))


def total(outputs: Iterable):
    """The elementwise sum of a stream of pytrees."""
    return functools.reduce(lambda a, b: jax.tree.map(jnp.add, a, b), outputs)
