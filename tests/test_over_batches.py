"""The evaluation loop: a family function over global batches, with its index and step."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jvision import over_batches, sharding


class Toy(nnx.Module):
    """A model with one (unused) variable: the loop passes its state through."""

    def __init__(self):
        self.weight = nnx.Param(jnp.zeros(()))


def test_over_batches_passes_the_index_and_step_and_replicates():
    mesh = sharding.make_mesh()
    model = Toy()
    graphdef, state = nnx.split(model)

    def fn(model, batch, step, index):
        return batch["x"].sum() + 1000 * index + 10_000 * step

    run = over_batches.OverBatches(fn, mesh)
    batches = [{"x": np.full((8,), value, np.float32)} for value in (1.0, 2.0)]
    outputs = list(run(graphdef, state, batches, 3))
    assert [float(o) for o in outputs] == [30_008.0, 31_016.0]
    assert outputs[0].sharding.is_fully_replicated
